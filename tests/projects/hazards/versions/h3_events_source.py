"""events.source, with a downgrade that does nothing"""

import sqlalchemy as sa
from alembic import op

revision = "h3_events_source"
down_revision = "h2_events_kind_idx"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("source", sa.Text))


def downgrade() -> None:
    pass
