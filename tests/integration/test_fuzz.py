"""The fuzzer's smoke run (``bin/fuzz --smoke``): a few hundred generated requests, schema-based, mutated and raw,
against a real ``aeyon serve``, and every answer within the contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("schemathesis", reason="the fuzz extra is not installed")

REPO = Path(__file__).resolve().parents[2]
SEED = 20261126  # fixed, so that a failure here reproduces with `bin/fuzz --smoke --seed 20261126`


def test_a_smoke_run_of_generated_and_malformed_requests_gets_only_contract_answers(tmp_path: Path) -> None:
    """No 500, no 5xx but 502/503/504, X-Request-ID on every answer, every error body the contract's envelope with
    a code from its table, no request left hanging, and the orchestrator alive and healthy at the end (and stopped
    without leftovers)."""
    summary = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, str(REPO / "bin" / "fuzz.py"), "--smoke", "--seed", str(SEED), "--json",
                           str(summary)], cwd=REPO, capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"bin/fuzz --smoke failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    result = json.loads(summary.read_text())
    assert result["failures"] == []
    assert all(result["cases"].get(kind, 0) > 0 for kind in ("schema-positive", "schema-negative", "mutation", "raw"))
    assert sum(result["cases"].values()) >= 300
    assert result["statuses"].get("200", 0) > 0  # some requests got through to a guard, not only refusals
