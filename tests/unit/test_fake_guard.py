"""The misbehaving fake guard: each mode as a real HTTP client sees it, recording, and a prompt stop()."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.support.fake_guard import FakeGuard, last_post, refused_port

TIMEOUT = (2, 2)  # (connect, read) seconds
SHORT = (2, 0.5)


@pytest.fixture
def guard() -> Iterator[FakeGuard]:
    with FakeGuard() as fake:
        yield fake


def _wait_for(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    """Poll until condition() is true; fail at the deadline."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_ok_echoes_the_body_path_and_request_id_and_records_the_request(guard: FakeGuard) -> None:
    answer = requests.post(f"{guard.url}/scan", json={"text": "hi"}, headers={"X-Request-ID": "req-1"},
                           timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "echo": {"text": "hi"}, "path": "/scan", "request_id": "req-1"}
    last = guard.last_request
    assert last is not None
    assert (last.method, last.path, last.body) == ("POST", "/scan", {"text": "hi"})
    assert last.headers["X-Request-ID"] == "req-1"
    assert guard.count() == guard.count("/scan") == 1
    assert guard.count("/other") == 0


def test_last_post_skips_health_checks(guard: FakeGuard) -> None:
    with pytest.raises(LookupError):
        last_post(guard)
    requests.post(f"{guard.url}/validate", json={"n": 1}, timeout=TIMEOUT)
    requests.get(f"{guard.url}/health", timeout=TIMEOUT)
    assert last_post(guard).path == "/validate"
    assert guard.last_request is not None
    assert guard.last_request.path == "/health"
    guard.clear()
    assert guard.count() == 0


def test_a_body_that_is_not_json_is_recorded_as_bytes(guard: FakeGuard) -> None:
    answer = requests.post(f"{guard.url}/x", data=b"raw\xff", timeout=TIMEOUT)
    assert answer.json()["echo"] == "raw\ufffd"
    assert guard.last_request is not None
    assert guard.last_request.body == b"raw\xff"


def test_status_answers_that_code_with_a_json_body(guard: FakeGuard) -> None:
    guard.set_mode("status", code=503)
    answer = requests.post(f"{guard.url}/scan", json={}, timeout=TIMEOUT)
    assert answer.status_code == 503
    assert answer.json() == {"error": "fake guard answered 503"}
    guard.set_mode("status", code=422, body={"detail": "no"})
    answer = requests.post(f"{guard.url}/scan", json={}, timeout=TIMEOUT)
    assert (answer.status_code, answer.json()) == (422, {"detail": "no"})


def test_hang_never_answers(guard: FakeGuard) -> None:
    guard.set_mode("hang")
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{guard.url}/scan", json={}, timeout=SHORT)
    assert time.monotonic() - started < 2
    assert guard.count("/scan") == 1


def test_slow_answers_after_the_delay(guard: FakeGuard) -> None:
    guard.set_mode("slow", delay=0.3)
    started = time.monotonic()
    answer = requests.post(f"{guard.url}/scan", json={"a": 1}, timeout=TIMEOUT)
    assert time.monotonic() - started >= 0.3
    assert answer.json()["echo"] == {"a": 1}
    guard.set_mode("slow", delay=5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{guard.url}/scan", json={}, timeout=(2, 0.2))


def test_invalid_json_sends_an_unparseable_body(guard: FakeGuard) -> None:
    guard.set_mode("invalid_json")
    answer = requests.post(f"{guard.url}/scan", json={}, timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    with pytest.raises(requests.exceptions.JSONDecodeError):
        answer.json()


def test_reset_aborts_the_connection(guard: FakeGuard) -> None:
    guard.set_mode("reset")
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        requests.post(f"{guard.url}/scan", json={}, timeout=TIMEOUT)
    assert "reset" in str(caught.value).lower()


def test_close_hangs_up_without_an_answer(guard: FakeGuard) -> None:
    guard.set_mode("close")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"{guard.url}/scan", json={}, timeout=TIMEOUT)
    assert guard.count("/scan") == 1


def test_sequence_cycles_through_its_modes_per_request(guard: FakeGuard) -> None:
    guard.set_mode("sequence", modes=[("status", {"code": 500}), "ok"])
    with requests.Session() as session:
        codes = [session.post(f"{guard.url}/scan", json={}, timeout=TIMEOUT).status_code for _ in range(4)]
    assert codes == [500, 200, 500, 200]


def test_a_mode_switch_applies_to_the_next_request_on_a_kept_alive_connection(guard: FakeGuard) -> None:
    with requests.Session() as session:
        assert session.post(f"{guard.url}/a", json={}, timeout=TIMEOUT).status_code == 200
        guard.set_mode("status", code=502)
        assert session.post(f"{guard.url}/a", json={}, timeout=TIMEOUT).status_code == 502


@pytest.mark.parametrize(("mode", "kw"), [("bogus", {}), ("status", {}), ("slow", {"delay": 1, "x": 2}),
                                          ("sequence", {"modes": []}),
                                          ("sequence", {"modes": [("sequence", {"modes": ["ok"]})]})])
def test_set_mode_refuses_unknown_modes_and_keywords(guard: FakeGuard, mode: str, kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        guard.set_mode(mode, **kw)


def test_health_is_healthy_by_default_and_configurable(guard: FakeGuard) -> None:
    assert requests.get(f"{guard.url}/health", timeout=TIMEOUT).json() == {"status": "healthy"}
    guard.set_health(body={"status": "degraded"})
    assert requests.get(f"{guard.url}/health", timeout=TIMEOUT).json() == {"status": "degraded"}
    guard.set_health(503)
    assert requests.get(f"{guard.url}/health", timeout=TIMEOUT).status_code == 503
    guard.set_health(mode="hang")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{guard.url}/health", timeout=SHORT)
    # Health settings leave guard calls alone.
    assert requests.post(f"{guard.url}/scan", json={}, timeout=TIMEOUT).status_code == 200
    assert guard.count("/health", method="GET") == 4
    assert requests.get(f"{guard.url}/other", timeout=TIMEOUT).status_code == 404


@pytest.mark.parametrize(("mode", "kw"), [("hang", {}), ("slow", {"delay": 30})])
def test_stop_while_a_call_waits_returns_promptly_and_frees_the_client(mode: str, kw: dict[str, Any]) -> None:
    guard = FakeGuard()
    guard.set_mode(mode, **kw)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            requests.post(f"{guard.url}/scan", json={}, timeout=(2, 30))
        except requests.exceptions.RequestException as exc:
            outcome.append(exc)

    client = threading.Thread(target=call)
    client.start()
    _wait_for(lambda: guard.count("/scan") == 1)
    started = time.monotonic()
    guard.stop()
    assert time.monotonic() - started < 1.5
    client.join(5)
    assert not client.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], requests.exceptions.ConnectionError)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", guard.port), timeout=2).close()


def test_a_new_fake_guard_can_take_over_a_stopped_ones_port() -> None:
    with FakeGuard() as first:
        port = first.port
        requests.get(f"{first.url}/health", timeout=TIMEOUT)
    with FakeGuard(port) as second:
        assert requests.get(f"{second.url}/health", timeout=TIMEOUT).status_code == 200


def test_refused_port_refuses_connections() -> None:
    port = refused_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(f"http://127.0.0.1:{port}/scan", json={}, timeout=TIMEOUT)
