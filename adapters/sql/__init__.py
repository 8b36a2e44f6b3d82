"""SQLAlchemy adapter: tables, engine, unit of work, Alembic migrations."""
