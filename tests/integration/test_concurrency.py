"""Exactly one answer per request, under 200 concurrent requests with guards that succeed, fail, and hang."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, running

pytestmark = pytest.mark.integration

CLIENTS = 200


@pytest.fixture(scope="module")
def roomy(guards: dict[str, FakeGuard], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator whose in-flight and queue limits are above the test's concurrency."""
    env = {**guard_env(guards), "AEYON_MAX_IN_FLIGHT": "1000", "AEYON_MAX_IN_FLIGHT_PER_GUARD": "1000",
           "AEYON_QUEUE_PER_GUARD": "1000"}
    with running(env, Path(tmp_path_factory.mktemp("roomy")) / "serve.log") as orch:
        yield orch


def _exchange(port: int, service: str, request_id: str, timeout_s: float) -> tuple[int, dict, bytes]:
    """One request on its own keep-alive connection; returns status, body, and anything the server sent after."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"service": service, "payload": {"text": request_id}, "request_id": request_id,
                           "timeout": timeout_s})
        conn.request("POST", "/v1/orchestrate", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = json.loads(response.read())
        # A second answer to the same request would arrive on this connection: there must be none.
        assert conn.sock is not None
        conn.sock.settimeout(0.3)
        extra = b""
        with contextlib.suppress(TimeoutError, socket.timeout):
            extra = conn.sock.recv(1024)
        return response.status, data, extra
    finally:
        conn.close()


# The answers each guard's behaviour allows: failing guards trip their breaker part-way, after which the rest of
# their requests are answered circuit_open at once.
EXPECTED = {
    "tokenguard": {(200, None)},
    "contextguard": {(200, None)},
    "biasguard": {(502, "upstream_error"), (503, "circuit_open")},
    "healthguard": {(422, "guard_rejected")},
    "trustguard": {(504, "upstream_timeout"), (503, "circuit_open")},
    "securityguard": {(502, "upstream_error"), (503, "circuit_open")},
}


def test_200_concurrent_requests_each_get_exactly_one_answer_with_the_right_code(
    roomy: Orchestrator, fresh_guards: dict[str, FakeGuard]
) -> None:
    fresh_guards["contextguard"].set_mode("slow", delay=0.05)
    fresh_guards["biasguard"].set_mode("status", code=500)
    fresh_guards["healthguard"].set_mode("status", code=422, body={"error": "no"})
    fresh_guards["trustguard"].set_mode("hang")
    fresh_guards["securityguard"].set_mode("reset")
    services = sorted(EXPECTED)
    jobs = [(services[i % len(services)], f"c-{i}") for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        # The hung guard's requests time out after 2 s; the others have room even on a loaded machine.
        results = list(pool.map(lambda job: (job, _exchange(roomy.http_port, job[0], job[1],
                                                             2.0 if job[0] == "trustguard" else 30.0)), jobs))
    assert len(results) == CLIENTS
    for (service, request_id), (status, body, extra) in results:
        assert body["request_id"] == request_id
        assert body["service"] == service
        code = body["error"]["code"] if status != 200 else None
        assert (status, code) in EXPECTED[service], (service, status, body)
        assert extra == b"", f"{request_id} got a second answer: {extra[:80]!r}"
    fresh_guards["trustguard"].set_mode("ok")
    assert fresh_guards["tokenguard"].count(method="POST") == sum(1 for service, _ in jobs if service == "tokenguard")


def test_200_concurrent_requests_to_one_healthy_guard_all_succeed(roomy: Orchestrator,
                                                                  fresh_guards: dict[str, FakeGuard]) -> None:
    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(lambda i: _exchange(roomy.http_port, "tokenguard", f"ok-{i}", 30.0),
                                range(CLIENTS)))
    assert sorted(body["request_id"] for _, body, _ in results) == sorted(f"ok-{i}" for i in range(CLIENTS))
    assert all(status == 200 for status, _, _ in results)
    assert all(extra == b"" for _, _, extra in results)
    assert fresh_guards["tokenguard"].count(method="POST") == CLIENTS
