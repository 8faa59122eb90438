"""runs: typed physical and masks_only columns (filled from the notes of finished runs)

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

RUNS = sa.table(
    "runs",
    sa.column("id", sa.Integer()),
    sa.column("notes", sa.JSON()),
    sa.column("physical", sa.Boolean()),
    sa.column("masks_only", sa.Boolean()),
)


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("physical", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("masks_only", sa.Boolean(), nullable=True))
    _backfill()


def _backfill() -> None:
    """Runs recorded before these columns said it in their notes; read them once, here."""
    conn = op.get_bind()
    for run_id, notes in conn.execute(sa.select(RUNS.c.id, RUNS.c.notes)).all():
        notes = notes or []
        physical = any("physically removed" in n for n in notes)
        masks_only = any("masks only" in n for n in notes)
        if physical or masks_only:
            conn.execute(
                RUNS.update()
                .where(RUNS.c.id == run_id)
                .values(physical=physical, masks_only=masks_only)
            )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("masks_only")
        batch_op.drop_column("physical")
