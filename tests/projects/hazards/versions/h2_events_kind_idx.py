"""an index built without CONCURRENTLY: writes to events wait while it builds"""

from alembic import op

revision = "h2_events_kind_idx"
down_revision = "h1_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_kind", "events", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_events_kind", "events")
