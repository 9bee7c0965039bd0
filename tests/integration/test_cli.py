"""`aeyon orchestrate` against a running orchestrator: output, exit status, and one-line reasons."""

from __future__ import annotations

import json

import pytest

from tests.support.fake_guard import FakeGuard, last_post
from tests.support.orchestrator import Orchestrator

pytestmark = pytest.mark.integration


def test_orchestrate_with_text_prints_the_result_and_exits_0(orchestrator: Orchestrator,
                                                             fresh_guards: dict[str, FakeGuard]) -> None:
    out = orchestrator.cli("orchestrate", "tokenguard", "--text", "hello", "--request-id", "cli-1")
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert (printed["request_id"], printed["status"]) == ("cli-1", "success")
    assert printed["result"]["echo"] == {"text": "hello"}
    assert last_post(fresh_guards["tokenguard"]).headers["X-Request-ID"] == "cli-1"


def test_orchestrate_with_a_payload(orchestrator: Orchestrator, fresh_guards: dict[str, FakeGuard]) -> None:
    out = orchestrator.cli("orchestrate", "healthguard", "--payload", '{"text": "x", "lang": "en"}')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["result"]["echo"] == {"text": "x", "lang": "en"}


def test_orchestrate_errors_exit_non_zero_with_a_one_line_reason(orchestrator: Orchestrator,
                                                                 fresh_guards: dict[str, FakeGuard]) -> None:
    fresh_guards["biasguard"].set_mode("status", code=500)
    out = orchestrator.cli("orchestrate", "biasguard", "--text", "x")
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"]["code"] == "upstream_error"
    assert out.stderr.strip().startswith("aeyon: upstream_error:")
    assert len(out.stderr.strip().splitlines()) == 1
    unknown = orchestrator.cli("orchestrate", "nosuch", "--text", "x")
    assert unknown.returncode == 1 and "unknown_service" in unknown.stderr


@pytest.mark.parametrize("payload", ["not json", "[1, 2]"])
def test_a_bad_payload_argument_is_refused_before_anything_is_sent(orchestrator: Orchestrator, payload: str) -> None:
    out = orchestrator.cli("orchestrate", "tokenguard", "--payload", payload)
    assert out.returncode == 1
    assert out.stderr.startswith("aeyon: --payload")
