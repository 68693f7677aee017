"""How mlpipe reaches ML Metadata: the one ConnectionConfig of a Config ([metadata]: the workspace's
SQLite file or a MySQL/MariaDB database), the password (from the environment or a file, never the
config file, never logged), and a plain MySQL client for what MLMD does not do (GET_LOCK, copying).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ml_metadata.proto import metadata_store_pb2

from pipeline.config import Config, ConfigError


class MetadataConnectionError(ConfigError):
    """The [metadata] settings do not reach a usable database; `key` names the setting to fix."""


def location(config: Config) -> dict:
    """Where the config's metadata lives, for answers and messages (never the password)."""
    m = config.metadata
    if m.backend == "sqlite":
        return {"backend": "sqlite", "path": str(config.metadata_path)}
    return {"backend": "mysql", "host": m.host, "port": m.port, "database": m.database, "user": m.user}


def describe(config: Config) -> str:
    """location() in words: the SQLite file, or the database and its address."""
    where = location(config)
    if where["backend"] == "sqlite":
        return where["path"]
    return f"the {where['backend']} database {where['database']} at {where['host']}:{where['port']}"


def password(config: Config) -> str:
    """The MySQL password: the first line of metadata.password_file, else $<metadata.password_env>."""
    m = config.metadata
    if m.password_file:
        try:
            lines = Path(m.password_file).expanduser().read_text().splitlines()
        except OSError as e:
            raise MetadataConnectionError(
                "metadata.password_file", f"cannot read {m.password_file}: " f"{e.strerror or e}"
            ) from None
        return lines[0] if lines else ""
    if m.password_env not in os.environ:
        raise MetadataConnectionError(
            "metadata.password_env",
            f"environment variable {m.password_env} is not set; "
            "export the database password in it (or set metadata.password_file)",
        )
    return os.environ[m.password_env]


def sqlite_connection_config(path: str | Path, read_only: bool) -> metadata_store_pb2.ConnectionConfig:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(path)
    config.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
        if read_only
        else metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    )
    return config


def connection_config(config: Config, read_only: bool = False) -> metadata_store_pb2.ConnectionConfig:
    """THE MLMD connection of a config (every store mlpipe opens, and the pipeline's own, come from here).

    Holds the MySQL password: never log it or write it anywhere (see `redacting`).
    `read_only` applies to SQLite only (MySQL has no read-only connection mode in MLMD).
    """
    m = config.metadata
    if m.backend == "sqlite":
        return sqlite_connection_config(config.metadata_path, read_only)
    result = metadata_store_pb2.ConnectionConfig()
    result.mysql.host = m.host
    result.mysql.port = m.port
    result.mysql.database = m.database
    result.mysql.user = m.user
    result.mysql.password = password(config)
    result.mysql.skip_db_creation = True  # a missing database is a settings error, not something to create
    return result


# MySQL client error numbers -> the [metadata] setting that is wrong.
_ERRNO_SETTING = {
    1044: ("metadata.database", "user {user} may not use database {database}"),
    1045: ("metadata.password_env", "access denied for user {user} (wrong user or password)"),
    1049: (
        "metadata.database",
        "database {database} does not exist on {host}:{port}; create it " "(CREATE DATABASE) or fix the name",
    ),
    2003: (
        "metadata.host",
        "cannot connect to MySQL at {host}:{port}; check metadata.host and metadata.port " "and that the server runs",
    ),
    2005: ("metadata.host", "unknown host {host}"),
}
_checked: set = set()


def mysql_connect(config: Config, timeout: float = 10.0):
    """A PyMySQL connection with the [metadata] settings (for the DB lock and `mlpipe metadata`).

    Bad settings raise MetadataConnectionError naming the setting, never showing the password.
    """
    import pymysql

    m = config.metadata
    secret = password(config)
    try:
        return pymysql.connect(
            host=m.host,
            port=m.port,
            user=m.user,
            password=secret,
            database=m.database,
            connect_timeout=timeout,
            autocommit=True,
        )
    except pymysql.err.MySQLError as e:
        code = e.args[0] if e.args and isinstance(e.args[0], int) else None
        key, message = _ERRNO_SETTING.get(code, ("metadata.host", "cannot use MySQL at {host}:{port}: {error}"))
        if key == "metadata.password_env" and m.password_file:
            key = "metadata.password_file"
        error = str(e.args[1] if len(e.args) > 1 else e).replace(secret, "***") if secret else str(e)
        raise MetadataConnectionError(
            key, message.format(host=m.host, port=m.port, user=m.user, database=m.database, error=error)
        ) from None


def check_connection(config: Config) -> None:
    """Raises MetadataConnectionError unless the configured database accepts the configured user.

    Checked with a plain client first because MLMD's own connect error says nothing about the cause
    (and prints to stderr); done once per process and settings.
    """
    m = config.metadata
    if m.backend == "sqlite":
        return
    key = (m.host, m.port, m.database, m.user)
    if key not in _checked:
        mysql_connect(config).close()
        _checked.add(key)


class redacting:
    """Context manager: while active, the config's MySQL password is masked in every log record
    (TFX's LocalDagRunner logs its whole connection config)."""

    def __init__(self, config: Config):
        self.secret = password(config) if config.metadata.backend == "mysql" else ""

    def filter(self, record) -> bool:
        if self.secret:
            message = record.getMessage()
            if self.secret in message:
                record.msg, record.args = message.replace(self.secret, "********"), ()
        return True

    def __enter__(self):
        self.loggers = [logging.getLogger(), logging.getLogger("absl")]
        for logger in self.loggers:
            logger.addFilter(self)
            for handler in logger.handlers:
                handler.addFilter(self)
        return self

    def __exit__(self, *exc):
        for logger in self.loggers:
            logger.removeFilter(self)
            for handler in logger.handlers:
                handler.removeFilter(self)
        return False


def retry_on_lock(action, attempts: int = 5, delay: float = 1.0):
    """Runs `action`, retrying while another process holds the store's write lock (a pipeline run writing
    SQLite at the same moment); MLMD raises its own error types, so the message says "lock" or "busy"."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as e:
            if "lock" not in str(e).lower() and "busy" not in str(e).lower() or attempt == attempts - 1:
                raise
            time.sleep(delay * (attempt + 1))
