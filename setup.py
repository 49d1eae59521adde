"""The package list, found rather than written down (the rest is in pyproject.toml).

setuptools' ``packages.find`` names packages after their folders, so it cannot find the suites
under the name they are installed as (``pytest_ledger_rollout.suites``, from ``suites/``, see
``[tool.setuptools.package-dir]``). A new phase's suite package under ``suites/`` is found
here; the phase itself is declared in ``pytest_ledger_rollout/phases/model.py``.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["pytest_ledger_rollout", "pytest_ledger_rollout.*"]),
        *(f"pytest_ledger_rollout.{name}" for name in find_packages(include=["suites*"])),
    ]
)
