"""curve_points.test_loss and sensitivity_rows.perplexity: a language model's curves and
sensitivity sweep in perplexity (exp of the held-out token NLL), not next-token accuracy

Revision ID: 0008_h12ui
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0008_h12ui"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("curve_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("test_loss", sa.Float(), nullable=True))
    with op.batch_alter_table("sensitivity_rows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("perplexity", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sensitivity_rows", schema=None) as batch_op:
        batch_op.drop_column("perplexity")
    with op.batch_alter_table("curve_points", schema=None) as batch_op:
        batch_op.drop_column("test_loss")
