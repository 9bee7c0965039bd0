"""Hot reload (POST /v1/config and SIGHUP with AEYON_CONFIG_FILE): settings change without a restart and without
losing breaker state, health or rate-limit buckets; a wrong change is refused whole."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard, last_post
from tests.support.orchestrator import running, wait_for

pytestmark = pytest.mark.integration

TOKEN = "reload-admin-token-0123456789"


def _code(response) -> str | None:
    return None if response.status_code == 200 else response.json()["error"]["code"]


def test_post_config_changes_urls_limits_and_thresholds_keeping_state(guards: dict[str, FakeGuard],
                                                                     fresh_guards: dict[str, FakeGuard],
                                                                     tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    env = {**guard_env(guards), "AEYON_ADMIN_TOKEN": TOKEN, "AEYON_BREAKER_MIN_CALLS": "5",
           "AEYON_BREAKER_WINDOW": "5", "AEYON_BREAKER_OPEN": "60"}
    with FakeGuard() as replacement, running(env, tmp_path / "serve.log") as orch:
        fresh_guards["biasguard"].set_mode("status", code=500)
        for _ in range(5):
            orch.orchestrate("biasguard", {"text": "x"})
        assert _code(orch.orchestrate("biasguard", {"text": "x"})) == "circuit_open"

        assert orch.post("/v1/config", {"TOKENGUARD_URL": replacement.url}).status_code == 401  # admin only
        answer = orch.post("/v1/config", {"TOKENGUARD_URL": replacement.url, "SECURITY_MAX_REQUESTS_PER_MINUTE": 3,
                                          "AEYON_BREAKER_FAILURE_RATE": "60"}, headers=auth)
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["changed"]) == {"guard_urls", "max_requests_per_minute", "breaker"}

        # The new URL is used (its supervisor, breaker and health kept; its health is checked again at once)...
        wait_for(lambda: orch.orchestrate("tokenguard", {"text": "x"}).status_code == 200
                 and replacement.count(method="POST") > 0, 10, "calls to the new URL")
        assert last_post(replacement).path == "/scan"
        # ... the other guard's open breaker is still open ...
        assert _code(orch.orchestrate("biasguard", {"text": "x"})) == "circuit_open"
        # ... and the client's bucket now holds the new, smaller budget.
        codes = [_code(orch.orchestrate("healthguard", {"text": "x"})) for _ in range(4)]
        assert "rate_limited" in codes
        shown = orch.get("/v1/config", headers=auth).json()
        assert shown["max_requests_per_minute"] == 3
        assert shown["guard_urls"]["tokenguard"] == replacement.url
        assert shown["admin_token"] == "***"


@pytest.mark.parametrize(("values", "problem"), [
    ({"AEYON_BREAKER_FAILURE_RATE": "500"}, "AEYON_BREAKER_FAILURE_RATE:"),
    ({"AEYON_PORT": "1234"}, "AEYON_PORT: cannot change while running"),
    ({"NOT_A_SETTING": "1"}, "NOT_A_SETTING: not a setting"),
    ({"TOKENGUARD_URL": "ftp://x", "SECURITY_MAX_REQUESTS_PER_MINUTE": "5"}, "TOKENGUARD_URL:"),
])
def test_a_wrong_change_is_refused_whole_with_the_reason(guards: dict[str, FakeGuard], tmp_path: Path,
                                                         values: dict, problem: str) -> None:
    with running(guard_env(guards), tmp_path / "serve.log") as orch:
        before = orch.get("/v1/config").json()
        answer = orch.post("/v1/config", values)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_request"
        assert answer.json()["error"]["message"].startswith(problem)
        assert orch.get("/v1/config").json() == before


def test_sighup_reloads_the_config_file(guards: dict[str, FakeGuard], fresh_guards: dict[str, FakeGuard],
                                       tmp_path: Path) -> None:
    config = tmp_path / "aeyon.env"
    config.write_text("# nothing yet\n")
    with FakeGuard() as replacement, running({**guard_env(guards), "AEYON_CONFIG_FILE": str(config)},
                                             tmp_path / "serve.log") as orch:
        config.write_text(f"TOKENGUARD_URL={replacement.url}\nAEYON_BREAKER_MIN_CALLS='7'\n")
        os.kill(orch.process.pid, signal.SIGHUP)
        wait_for(lambda: orch.orchestrate("tokenguard", {"text": "x"}).status_code == 200
                 and replacement.count(method="POST") > 0, 10, "calls to the file's URL")
        assert orch.get("/v1/config").json()["breaker"]["minimum_calls"] == 7
        config.write_text("AEYON_BREAKER_MIN_CALLS=zero\n")
        os.kill(orch.process.pid, signal.SIGHUP)
        wait_for(lambda: "the new settings were refused" in orch.log(), 10, "the refusal in the log")
        assert "AEYON_BREAKER_MIN_CALLS" in orch.log()
        assert orch.get("/v1/config").json()["breaker"]["minimum_calls"] == 7
