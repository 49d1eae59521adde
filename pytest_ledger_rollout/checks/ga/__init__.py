"""PRD-GA's checks on production data, read-only: one module per runbook step."""
