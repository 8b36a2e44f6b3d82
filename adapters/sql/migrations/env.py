from alembic import context

from adapters.sql.engine import make_engine
from adapters.sql.tables import metadata

config = context.config
# Set by adapters/sql/migrate.py (`atelier migrate`); there is no alembic.ini to read one from.
url = config.attributes.get("database_url")
if url is None:
    raise SystemExit("migrations run through `atelier migrate`, which passes DATABASE_URL")


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
