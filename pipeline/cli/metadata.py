"""`mlpipe metadata check | copy`: where ML Metadata lives (docs/metadata.md).

Exit codes: 0 done, 1 the copy failed part-way (nothing was written: it is one transaction),
2 bad usage or [metadata] settings (one line naming the setting).
"""

from __future__ import annotations

import argparse
import json

from pipeline import cli
from pipeline.metadata import connection as metadata_connection


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "metadata",
        help="check the ML Metadata connection, or copy a local SQLite history into MySQL",
        description="ML Metadata lives in <workspace>/metadata.sqlite unless the config's [metadata] section "
        "names a MySQL/MariaDB database (docs/metadata.md). Exit 0 done, 1 failed, 2 bad usage or settings.",
    )
    sub = parser.add_subparsers(dest="metadata_command", metavar="SUBCOMMAND")
    check = sub.add_parser(
        "check",
        help="connect with the configured settings and say where metadata lives",
        description="Connects to the configured metadata store (creating MLMD's tables in an empty MySQL "
        "database) and prints the backend, where it is and how many runs it holds. Never prints the password.",
    )
    cli.add_config_options(check)
    check.add_argument("--json", action="store_true", help="print the answer as JSON (see docs/metadata.md)")
    check.set_defaults(func=_check)
    copy = sub.add_parser(
        "copy",
        help="copy a workspace's SQLite history into the configured MySQL database",
        description="Copies every MLMD record of <workspace>/metadata.sqlite (or --from FILE) into the MySQL "
        "database of --config's [metadata] section: types, artifacts, executions, contexts, events, "
        "attributions and associations with their properties, keeping ids and timestamps, in one "
        "transaction. The database must hold no MLMD history yet. Afterwards `mlpipe runs/models/lineage "
        "--config ...` answer as they did on SQLite.",
    )
    cli.add_config_options(copy)
    copy.add_argument("--to", choices=("mysql",), required=True, help="target backend (the config's [metadata])")
    copy.add_argument(
        "--from", dest="source", metavar="FILE", help="the SQLite store to copy (default: <workspace>/metadata.sqlite)"
    )
    copy.add_argument("--json", action="store_true", help="print the rows copied per table as JSON")
    copy.set_defaults(func=_copy)
    parser.set_defaults(func=lambda args: (parser.print_help(), cli.EXIT_USAGE)[1])


def _check(args: argparse.Namespace) -> int:
    from pipeline.metadata import queries as metadata

    config = cli.load_config(args)
    store = metadata.open_store(config, read_only=config.metadata.backend == "sqlite")
    runs = len(metadata.pipeline_runs(store, config.pipeline_name)) if store is not None else 0
    answer = {**metadata_connection.location(config), "pipeline_name": config.pipeline_name, "runs": runs}
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        where = answer.get("path") or f"{answer['user']}@{answer['host']}:{answer['port']}/{answer['database']}"
        print(f"mlpipe: metadata in {config.metadata.backend} at {where}: {runs} run(s) of {config.pipeline_name}")
    return cli.EXIT_OK


def _copy(args: argparse.Namespace) -> int:
    from pipeline.metadata import copy as metadata_copy

    config = cli.load_config(args)
    source = args.source or str(config.metadata_path)
    copied = metadata_copy.copy_sqlite_to_mysql(source, config)
    if args.json:
        print(json.dumps({"from": source, "to": metadata_connection.location(config), "copied": copied}, indent=2))
    else:
        m = config.metadata
        print(
            f"mlpipe: copied {copied['Artifact']} artifacts, {copied['Execution']} executions, "
            f"{copied['Context']} contexts and {copied['Event']} events from {source} "
            f"to mysql {m.user}@{m.host}:{m.port}/{m.database}"
        )
    return cli.EXIT_OK
