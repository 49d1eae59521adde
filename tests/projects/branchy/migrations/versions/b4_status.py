"""account status: an enum type and a sequence"""

import sqlalchemy as sa
from alembic import op

revision = "b4_status"
down_revision = "b3_merge"
branch_labels = None
depends_on = None

STATUS = sa.Enum("active", "closed", name="account_status")


def upgrade() -> None:
    STATUS.create(op.get_bind())
    op.add_column("accounts", sa.Column("status", STATUS, nullable=False, server_default="active"))
    op.execute("CREATE SEQUENCE invoice_numbers START 1000")


def downgrade() -> None:
    op.execute("DROP SEQUENCE invoice_numbers")
    op.drop_column("accounts", "status")
    STATUS.drop(op.get_bind())
