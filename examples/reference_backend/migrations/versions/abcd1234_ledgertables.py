"""ledger tables: tenants, wallets (legacy balance), ledger_entries, withdrawals, feature_flags

Revision ID: abcd1234_ledgertables
Revises:
Create Date: 2025-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "abcd1234_ledgertables"
down_revision = None
branch_labels = None
depends_on = None

MONEY = sa.Numeric(18, 2)


def created_at() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def upgrade() -> None:
    # Alembic creates version_num as VARCHAR(32); the next revision ids are 35 and 46
    # characters long, so the column must be wide enough before they are recorded.
    op.alter_column(
        "alembic_version",
        "version_num",
        type_=sa.String(128),
        existing_type=sa.String(32),
        existing_nullable=False,
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        created_at(),
    )
    op.create_table(
        "wallets",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("owner_ref", sa.Text, nullable=False),
        sa.Column("currency", sa.CHAR(3), nullable=False, server_default="TRY"),
        sa.Column("balance", MONEY, nullable=False, server_default="0"),
        created_at(),
        sa.UniqueConstraint("tenant_id", "owner_ref", "currency", name="uq_wallets_owner"),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("wallet_id", sa.BigInteger, sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("entry_type", sa.Text, nullable=False),
        sa.Column("reference", sa.Text),
        created_at(),
        sa.CheckConstraint(
            "entry_type IN ('deposit', 'withdrawal', 'withdrawal_reversal',"
            " 'opening_balance', 'adjustment')",
            name="ck_ledger_entries_type",
        ),
        sa.UniqueConstraint("wallet_id", "entry_type", "reference", name="uq_ledger_entry_ref"),
    )
    op.create_index("ix_ledger_entries_wallet", "ledger_entries", ["wallet_id"])
    op.create_index("ix_ledger_entries_tenant", "ledger_entries", ["tenant_id"])
    op.create_table(
        "withdrawals",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("wallet_id", sa.BigInteger, sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("status", sa.Text, nullable=False, server_default="requested"),
        created_at(),
        sa.Column("approved_at", sa.DateTime(timezone=True)),
        sa.Column("paid_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("amount > 0", name="ck_withdrawals_amount_positive"),
        sa.CheckConstraint(
            "status IN ('requested', 'approved', 'paid', 'rejected')",
            name="ck_withdrawals_status",
        ),
    )
    op.create_index("ix_withdrawals_tenant_status", "withdrawals", ["tenant_id", "status"])
    op.create_table(
        "feature_flags",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("key", sa.Text, nullable=False),
        # NULL tenant_id is the global value; a row with a tenant overrides it.
        sa.Column("tenant_id", sa.Text, sa.ForeignKey("tenants.id")),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column("changed_by", sa.Text),
    )
    op.create_index(
        "uq_feature_flags_key_tenant",
        "feature_flags",
        ["key", sa.text("coalesce(tenant_id, '')")],
        unique=True,
    )


def downgrade() -> None:
    for table in ("feature_flags", "withdrawals", "ledger_entries", "wallets", "tenants"):
        op.drop_table(table)
    op.alter_column(
        "alembic_version",
        "version_num",
        type_=sa.String(32),
        existing_type=sa.String(128),
        existing_nullable=False,
    )
