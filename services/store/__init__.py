"""Durable storage: SQLModel tables, engine/session helpers, queries and Alembic migrations."""
