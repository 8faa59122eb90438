"""runs.allocation: a sensitivity run's per-layer allocation as a structured field

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("allocation", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "allocation")
