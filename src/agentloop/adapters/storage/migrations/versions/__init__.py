"""Alembic revisions, hand-written, one file each."""
