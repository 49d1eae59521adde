"""The reference ledger service: the STG-MIG schema served over HTTP, with the rollout's flags,
the OPS-01 backfill, a seed command and fault switches for tests (see the README's
"Reference service API")."""
