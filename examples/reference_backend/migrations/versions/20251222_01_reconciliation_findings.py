"""reconciliation_findings: what the provider reconciliation found per event

Revision ID: 20251222_01_reconciliation_findings
Revises: abcd1234_ledgertables
Create Date: 2025-12-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "20251222_01_reconciliation_findings"
down_revision = "abcd1234_ledgertables"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reconciliation_findings",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("provider", sa.Text, nullable=False),
        sa.Column("provider_event_id", sa.Text, nullable=False),
        sa.Column("finding_type", sa.Text, nullable=False),
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id")),
        sa.Column("wallet_id", sa.BigInteger, sa.ForeignKey("wallets.id")),
        sa.Column("details", postgresql.JSONB, nullable=False, server_default="{}"),
        sa.Column("resolved", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "detected_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
    )
    op.create_index("ix_recon_findings_tenant", "reconciliation_findings", ["tenant_id"])


def downgrade() -> None:
    op.drop_table("reconciliation_findings")
