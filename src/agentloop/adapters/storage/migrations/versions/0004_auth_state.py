"""A revocation counter for cached credentials, and an index for a user's conversation list.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    state = op.create_table(
        "auth_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revocations", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_auth_state"),
    )
    op.bulk_insert(state, [{"id": 1, "revocations": 0}])
    op.create_index("ix_conversations_owner_updated", "conversations", ["owner_id", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_conversations_owner_updated", table_name="conversations")
    op.drop_table("auth_state")
