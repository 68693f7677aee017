"""Moves an ML Metadata history from a workspace's SQLite file into a MySQL/MariaDB database.

MLMD keeps the same tables, columns and schema version in both backends, so the copy is
table by table, row by row, with every id and timestamp kept: types (and their properties and
parents), artifacts, executions, contexts (with properties), parent contexts, events (with paths),
attributions and associations. Nothing else (run ids, lineage, registry records) needs rewriting.
The target must hold no history yet; the copy is one transaction (all or nothing).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from pipeline.config import Config, ConfigError
from pipeline.metadata import queries as metadata

# Insert order: types first, then nodes, then the links between them.
TABLES = (
    "Type",
    "TypeProperty",
    "ParentType",
    "Artifact",
    "ArtifactProperty",
    "Execution",
    "ExecutionProperty",
    "Context",
    "ContextProperty",
    "ParentContext",
    "Event",
    "EventPath",
    "Association",
    "Attribution",
)
HISTORY_TABLES = ("Artifact", "Execution", "Context")
BATCH = 500


class CopyError(ConfigError):
    """The copy cannot start (no source, non-empty target, schema mismatch); `key` says what to fix."""


def _source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise CopyError("--from", f"no MLMD SQLite store at {path} (nothing has run in that workspace)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='MLMDEnv'").fetchone() is None:
        conn.close()
        raise CopyError("--from", f"{path} is not an MLMD store")
    return conn


def copy_sqlite_to_mysql(source: str | Path, config: Config) -> dict[str, int]:
    """Copies every MLMD row of the SQLite file `source` into the config's MySQL database.

    Returns {table: rows copied}. Raises CopyError (or metadata.MetadataConnectionError) before
    writing anything when the target is not an empty MLMD database of the same schema version.
    """
    if config.metadata.backend != "mysql":
        raise CopyError("metadata.backend", 'copying needs [metadata] backend = "mysql" (the target) in --config')
    src = _source(Path(source))
    try:
        metadata.open_store(config, read_only=False)  # creates MLMD's tables in an empty database
        dst = metadata.mysql_connect(config)
        try:
            with dst.cursor() as cur:
                (src_version,) = src.execute("SELECT schema_version FROM MLMDEnv").fetchone()
                cur.execute("SELECT schema_version FROM MLMDEnv")
                (dst_version,) = cur.fetchone()
                if src_version != dst_version:
                    raise CopyError(
                        "--from",
                        f"MLMD schema version {src_version} at the source, {dst_version} "
                        "in the database; open the source with this mlpipe first",
                    )
                for table in HISTORY_TABLES:
                    cur.execute(f"SELECT COUNT(*) FROM `{table}`")
                    (count,) = cur.fetchone()
                    if count:
                        raise CopyError(
                            "metadata.database",
                            f"{config.metadata.database} already holds MLMD "
                            f"history ({count} rows in {table}); copy only into an empty database",
                        )
                # A fresh store holds MLMD's built-in types; they must match the source's to be replaced.
                cur.execute("SELECT id, name FROM Type")
                builtin = set(cur.fetchall())
                if not builtin <= set(src.execute("SELECT id, name FROM Type").fetchall()):
                    raise CopyError(
                        "metadata.database",
                        "its MLMD types differ from the source's; copy only " "into an empty database",
                    )
                copied = {}
                dst.begin()
                try:
                    for table in ("ParentType", "TypeProperty", "Type"):
                        cur.execute(f"DELETE FROM `{table}`")
                    for table in TABLES:
                        rows = src.execute(f"SELECT * FROM `{table}`")
                        columns = [d[0] for d in rows.description]
                        sql = (
                            f"INSERT INTO `{table}` ({', '.join(f'`{c}`' for c in columns)}) "
                            f"VALUES ({', '.join(['%s'] * len(columns))})"
                        )
                        copied[table] = 0
                        while batch := rows.fetchmany(BATCH):
                            cur.executemany(sql, batch)
                            copied[table] += len(batch)
                    dst.commit()
                except BaseException:
                    dst.rollback()
                    raise
                return copied
        finally:
            dst.close()
    finally:
        src.close()
