"""branch a: accounts.email with an index"""

import sqlalchemy as sa
from alembic import op

revision = "b2a_email"
down_revision = "b1_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("email", sa.String(200)))
    op.create_index("ix_accounts_email", "accounts", ["email"])


def downgrade() -> None:
    op.drop_index("ix_accounts_email", "accounts")
    op.drop_column("accounts", "email")
