"""branch b: audit_log"""

import sqlalchemy as sa
from alembic import op

revision = "b2b_audit"
down_revision = "b1_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("account_id", sa.BigInteger, sa.ForeignKey("accounts.id")),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
