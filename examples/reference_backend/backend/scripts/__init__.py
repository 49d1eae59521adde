"""Operator commands, run from examples/reference_backend as `python -m backend.scripts.NAME`."""
