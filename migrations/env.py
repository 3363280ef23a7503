"""Alembic environment: runs against the engine the caller hands over, or the URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, text

from monitor.db.engine import make_engine
from monitor.db.models import Base

config = context.config
target_metadata = Base.metadata
# Any fixed number: instances running `db upgrade` at once (ExecStartPre on each
# node) take turns; the one that waits then finds the schema current.
MIGRATION_LOCK_KEY = 0x636D6F6E  # "cmon"


def run_migrations_online() -> None:
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:
        engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY}
                )
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
