"""SQL storage: SQLAlchemy tables, Alembic migrations and the SqlStore repository."""

from agentloop.adapters.storage.database import create_engine, create_sessionmaker, ping, upgrade
from agentloop.adapters.storage.repository import SqlStore

__all__ = ["SqlStore", "create_engine", "create_sessionmaker", "ping", "upgrade"]
