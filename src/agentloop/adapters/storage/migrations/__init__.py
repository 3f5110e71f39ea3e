"""Alembic environment and revisions of the storage schema (packaged with agentloop)."""
