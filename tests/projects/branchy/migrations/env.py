"""Alembic environment: uses the connection handed in, else sqlalchemy.url from the ini."""

from alembic import context
from sqlalchemy import create_engine, pool


def run_migrations_online() -> None:
    handed_in = context.config.attributes.get("connection")
    if handed_in is not None:
        context.configure(connection=handed_in, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    with create_engine(url, poolclass=pool.NullPool).connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
