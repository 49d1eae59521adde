"""merge the email and audit branches"""

revision = "b3_merge"
down_revision = ("b2a_email", "b2b_audit")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
