"""Engines and schema state: SQLite tuned for a single writer, PostgreSQL as given.

SQLite gets WAL (readers never block the writer), a busy timeout, and
`BEGIN IMMEDIATE` for write transactions so two writers queue instead of
failing half-way with "database is locked". Read-only work passes
`execution_options(readonly=True)` and gets a plain deferred `BEGIN`.
"""

from __future__ import annotations

import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config

SQLITE_BUSY_TIMEOUT_MS = 10_000


class SchemaBehind(RuntimeError):
    """The database schema is older than this code; `db upgrade` fixes it."""


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size, future=True
    )


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        folder = Path(database).expanduser().resolve().parent
        if not folder.is_dir():
            raise FileNotFoundError(f"database folder {folder} does not exist (database.url {url})")
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    gate = WriteGate()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get("readonly", False):
            connection.exec_driver_sql("BEGIN")
            return
        gate.enter(connection.info)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            gate.leave(connection.info)
            raise

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _on_end(connection: Any) -> None:
        gate.leave(connection.info)

    return engine


class WriteGate:
    """Write transactions of one process take turns on a lock before `BEGIN IMMEDIATE`.

    SQLite's busy handler makes a waiting writer sleep (1 ms, 2, 5 ... up to
    100 ms at a time) and lets any other writer in meanwhile, so under steady
    writes (polls, status callbacks, deliveries) one can wait a second for a
    lock that was free most of that time. Threads waiting here are woken the
    moment it is free. The wait is bounded by the busy timeout; past it the
    transaction goes ahead and SQLite's own timeout decides, as before. Other
    processes still queue on SQLite's lock.
    """

    _HELD = "monitor_write_gate"

    def __init__(self, timeout_s: float = SQLITE_BUSY_TIMEOUT_MS / 1000) -> None:
        self._lock = threading.RLock()
        self._timeout_s = timeout_s

    def enter(self, info: dict[str, Any]) -> None:
        if not info.get(self._HELD) and self._lock.acquire(timeout=self._timeout_s):
            info[self._HELD] = True

    def leave(self, info: dict[str, Any]) -> None:
        # Released as the COMMIT starts: the next writer's BEGIN IMMEDIATE may meet
        # it for a moment (one 1 ms busy wait), never a transaction in progress.
        if info.pop(self._HELD, False):
            self._lock.release()


# The newest migration in migrations/versions (a unit test keeps the two equal).
# Knowing it without importing Alembic keeps every command's start-up fast:
# Alembic (with Mako and Pygments) is loaded only by `db upgrade`.
SCHEMA_HEAD = "0006"


def alembic_config(engine: Engine | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    location = resources.files("monitor.migrations")
    config.set_main_option("script_location", str(location))
    if engine is not None:
        config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
        config.attributes["engine"] = engine
    return config


def head_revision() -> str | None:
    """The newest revision the migration scripts define (reads them, via Alembic)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's revision; None for an empty database."""
    with engine.connect() as connection:
        if not engine.dialect.has_table(connection, "alembic_version"):
            return None
        rows = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    if len(rows) > 1:
        raise SchemaBehind(
            "alembic_version holds several revisions: run `conference-monitor db upgrade`"
        )
    return rows[0][0] if rows else None


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Apply every pending migration; returns (revision before, revision after)."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(alembic_config(engine), "head")
    return before, current_revision(engine)


def require_current_schema(engine: Engine) -> None:
    current, head = current_revision(engine), SCHEMA_HEAD
    if current != head:
        raise SchemaBehind(
            f"database schema is at {current or 'nothing (empty database)'}, this version needs "
            f"{head}: run `conference-monitor db upgrade`"
        )
