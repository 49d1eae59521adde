"""The kinds of target a phase runs against, and what each kind allows."""

EPHEMERAL, STAGING, PRODUCTION = "ephemeral", "staging", "production"
TARGET_KINDS = (EPHEMERAL, STAGING, PRODUCTION)
# Kinds on which upgrade / downgrade / stamp may ever run.
DESTRUCTIVE_KINDS = frozenset({EPHEMERAL, STAGING})
EVERY_KIND = frozenset(TARGET_KINDS)
TARGET_WORDS = {
    EPHEMERAL: "a throwaway Postgres (REHEARSAL)",
    STAGING: "staging",
    PRODUCTION: "production (read-only)",
}
