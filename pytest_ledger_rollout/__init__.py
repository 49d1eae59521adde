"""pytest-ledger-rollout: definition-of-done suites for each phase of a ledger rollout."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pytest-ledger-rollout")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
