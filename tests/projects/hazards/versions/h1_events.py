"""events"""

import sqlalchemy as sa
from alembic import op

revision = "h1_events"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("events")
