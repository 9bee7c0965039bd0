"""Graceful drain: on SIGTERM /ready turns 503 at once, new requests are still taken for the grace period, then
refused; requests in flight are answered; then everything stops and no process is left."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, tagged_pids, wait_for

pytestmark = pytest.mark.integration


def _post(orch: Orchestrator, request_id: str, timeout: float = 30,
          service: str = "tokenguard") -> tuple[int, str | None]:
    try:
        response = requests.post(orch.base_url + "/v1/orchestrate", timeout=timeout + 10,
                                 json={"service": service, "payload": {}, "request_id": request_id,
                                       "timeout": timeout})
    except requests.ConnectionError:
        return 0, "connection"
    return response.status_code, None if response.status_code == 200 else response.json()["error"]["code"]


def test_sigterm_drains_with_traffic_flowing(guards: dict[str, FakeGuard], fresh_guards: dict[str, FakeGuard],
                                             tmp_path: Path) -> None:
    # tokenguard's calls take 4 s: the first ones are still in flight when the 1.5 s grace period ends.
    fresh_guards["tokenguard"].set_mode("slow", delay=4.0)
    orch = Orchestrator({**guard_env(guards), "AEYON_DRAIN_GRACE": "1.5", "AEYON_DRAIN_TIMEOUT": "10"},
                        tmp_path / "serve.log")
    pool = ThreadPoolExecutor(8)
    try:
        orch.wait_ready()
        before = [pool.submit(_post, orch, f"before-{i}") for i in range(4)]
        wait_for(lambda: fresh_guards["tokenguard"].count(method="POST") >= 4, 10, "the calls in flight")
        orch.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # /ready turns 503 at once, so load balancers stop sending...
        wait_for(lambda: orch.get("/ready").status_code == 503, 1.0, "/ready to turn 503")
        assert orch.get("/ready").json() == {"status": "draining"}
        # ... while requests that still come during the grace period are served...
        assert _post(orch, "during", service="biasguard") == (200, None)
        # ... and after it, refused (the calls still in flight keep the shim up meanwhile).
        wait_for(lambda: _post(orch, "after", service="biasguard") == (503, "service_unavailable"), 5,
                 "new requests to be refused")
        assert time.monotonic() - signalled >= 1.4
        assert [f.result(timeout=20) for f in before] == [(200, None)] * 4  # in flight: answered
        assert orch.process.wait(30) == 0
        assert "drained after signal: every request answered" in orch.log()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        orch.stop()
    assert tagged_pids(orch.tag) == []


def test_at_the_drain_deadline_requests_still_in_flight_are_answered_503(
    guards: dict[str, FakeGuard], fresh_guards: dict[str, FakeGuard], tmp_path: Path
) -> None:
    fresh_guards["tokenguard"].set_mode("hang")
    orch = Orchestrator({**guard_env(guards), "AEYON_DRAIN_GRACE": "0", "AEYON_DRAIN_TIMEOUT": "1"},
                        tmp_path / "serve.log")
    pool = ThreadPoolExecutor(2)
    try:
        orch.wait_ready()
        hung = pool.submit(_post, orch, "hung", 120)
        wait_for(lambda: fresh_guards["tokenguard"].count(method="POST") >= 1, 10, "the call to hang")
        orch.process.send_signal(signal.SIGTERM)
        assert hung.result(timeout=15) == (503, "service_unavailable")
        assert orch.process.wait(30) == 0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        fresh_guards["tokenguard"].set_mode("ok")
        orch.stop()


def test_aeyon_stop_answers_the_requests_in_flight_first(guards: dict[str, FakeGuard],
                                                         fresh_guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    fresh_guards["tokenguard"].set_mode("slow", delay=1.5)
    orch = Orchestrator(guard_env(guards), tmp_path / "serve.log")
    pool = ThreadPoolExecutor(2)
    try:
        orch.wait_ready()
        slow = pool.submit(_post, orch, "slow")
        wait_for(lambda: fresh_guards["tokenguard"].count(method="POST") >= 1, 10, "the call in flight")
        out = orch.cli("stop")
        assert out.returncode == 0, out.stderr
        assert slow.result(timeout=10) == (200, None)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        orch.stop()
    assert tagged_pids(orch.tag) == []
