"""CI exercises what it claims: under CI=true a test whose service is missing fails, naming the service;
for a user it skips with the reason; .ci/run stops on a service it cannot set up."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import conftest
from conftest import ROOT


def test_a_missing_service_skips_for_a_user_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills: `require` skipping under CI=true too (the mutation `if False:` for `if SERVICES_REQUIRED:`)."""
    monkeypatch.setattr(conftest, "SERVICES_REQUIRED", False)
    with pytest.raises(pytest.skip.Exception, match=r"^PostgreSQL at 127.0.0.1:5432 is unreachable: refused$"):
        conftest.require("PostgreSQL", "PostgreSQL at 127.0.0.1:5432 is unreachable:\n  refused")
    monkeypatch.setattr(conftest, "SERVICES_REQUIRED", True)
    # Caught as any outcome (a skip would otherwise skip this test instead of failing it), then checked.
    with pytest.raises(BaseException) as failed:
        conftest.require("PostgreSQL", "PostgreSQL at 127.0.0.1:5432 is unreachable:\n  refused")
    assert failed.type is pytest.fail.Exception, failed.type
    assert str(failed.value) == "CI=true but PostgreSQL is missing: PostgreSQL at 127.0.0.1:5432 is unreachable: refused"
    with pytest.raises(BaseException) as failed:
        conftest.require_module("no_such_module_x", "not installed")
    assert failed.type is pytest.fail.Exception and str(failed.value).startswith("CI=true but the Python package no_such_module_x is missing: ")


def test_ci_true_is_read_from_the_environment_of_the_test_run(tmp_path) -> None:
    """The flag comes from CI=true exactly (the variable CI systems set), nothing else."""
    code = "import sys; sys.path.insert(0, 'tests'); import conftest; print(conftest.SERVICES_REQUIRED, conftest.NO_SHARED_DATA_OK)"
    def flags(**env: str) -> str:
        clean = {k: v for k, v in os.environ.items() if k not in ("CI", "EMBEDSWEEP_CI_WITHOUT_SHARED")}
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean | env, capture_output=True, text=True, check=True).stdout.strip()

    assert flags() == "False False"
    assert flags(CI="true") == "True False"
    assert flags(CI="1") == "False False"
    assert flags(CI="true", EMBEDSWEEP_CI_WITHOUT_SHARED="1") == "True True"


def test_ci_stops_on_a_service_it_cannot_set_up() -> None:
    """.ci/run has no `|| true` or "will skip" fallback: each set-up failure ends CI with one line."""
    script = (ROOT / ".ci" / "run").read_text()
    assert "|| true" not in script and "will skip" not in script
    assert "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 CI=true" in script
    for what in ("PostgreSQL could not be started", "could not install ${missing[*]}", "the SLURM cluster could not be set up"):
        assert f'fail "{what}' in script, what
    assert "EMBEDSWEEP_CI_WITHOUT_SHARED=1" in script  # only the step without ../shared may skip its tests


def test_no_test_skips_for_a_missing_service_on_its_own() -> None:
    """Every skip for something missing goes through conftest's require()/require_module(), so that CI
    fails on it. Allowed: skips for the kind of machine (a GPU there or not), which CI cannot change."""
    import re

    allowed = {("test_models.py", 'pytest.skip("CPU-only behaviour")')}
    found = set()
    for path in sorted(p for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_ci.py"):
        for line in path.read_text().splitlines():
            for call in re.findall(r"pytest\.(?:skip|importorskip)\([^)]*\)?", line):
                if "pytest.skip.Exception" not in line:
                    found.add((path.name, call))
    assert found == allowed
