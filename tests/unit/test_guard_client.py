"""GuardClient: every way a guard call or health check can end, mapped to the contract's outcomes.

Calls are made over real loopback sockets to servers that answer exact bytes (``CannedGuard``) or misbehave;
health checks, which go through ``requests``, use ``responses``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import responses

from system.guard_client import DEGRADED, HEALTHY, UNHEALTHY, CallOutcome, GuardClient
from tests.support.canned_guard import CannedGuard, Received, http_answer

URL = "http://guard.test:8001/scan"
HEALTH = "http://guard.test:8001/health"
NOW = 1_700_000_000.0


@pytest.fixture
def client() -> Iterator[GuardClient]:
    c = GuardClient(wallclock=lambda: NOW)
    yield c
    c.close()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def call(client: GuardClient, url: str, body: bytes = b'{"text":"hi"}', request_id: str = "req-1") -> CallOutcome:
    return client.call(url, body, request_id, time.time() + 5)


@contextlib.contextmanager
def answering(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Iterator[CannedGuard]:
    with CannedGuard(http_answer(status, body, headers)) as guard:
        yield guard


# -- calls: the guard's answer -----------------------------------------------------------------------------------


def test_200_json_is_success_with_the_raw_bytes(client):
    raw = b'{ "safe": true,  "score": 0.10 }'
    with answering(200, raw, {"Content-Type": "application/json"}) as guard:
        assert call(client, guard.url) == CallOutcome("success", 200, raw)


@pytest.mark.parametrize("status", [201, 202, 299])
def test_any_2xx_with_json_is_success(client, status):
    with answering(status, b"[1,2]") as guard:
        outcome = call(client, guard.url)
    assert (outcome.outcome, outcome.status, outcome.body) == ("success", status, b"[1,2]")


def test_204_without_a_body_is_not_a_json_answer(client):
    with CannedGuard(b"HTTP/1.1 204 No Content\r\n\r\n") as guard:
        outcome = call(client, guard.url)
    assert (outcome.outcome, outcome.status) == ("upstream_error", 204)


@pytest.mark.parametrize("raw", [b"not json", b"", b"{", b"<html>ok</html>"])
def test_200_with_invalid_json_is_upstream_error(client, raw):
    with answering(200, raw) as guard:
        outcome = call(client, guard.url)
    assert (outcome.outcome, outcome.status) == ("upstream_error", 200)
    assert "invalid JSON" in outcome.message


@pytest.mark.parametrize("raw", [b'{"score": NaN}', b'{"score": Infinity}', b'[-Infinity]'])
def test_an_answer_holding_nan_or_infinity_is_not_json_and_is_an_upstream_error(client, raw):
    # Found by bin/fuzz: Python's json accepts them, and passing them on would make our answer invalid JSON.
    with answering(200, raw) as guard:
        assert call(client, guard.url).outcome == "upstream_error"


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_upstream_error_and_not_followed(client, status):
    with CannedGuard(http_answer(200, b'{"followed": true}')) as elsewhere, \
            answering(status, headers={"Location": elsewhere.url}) as guard:
        outcome = call(client, guard.url)
    assert (outcome.outcome, outcome.status) == ("upstream_error", status)
    assert (len(guard.received), len(elsewhere.received)) == (1, 0)


@pytest.mark.parametrize("status", [400, 404, 422, 429])
def test_a_4xx_is_guard_rejected_with_its_json_body(client, status):
    with answering(status, b'{"error":"text too long"}') as guard:
        outcome = call(client, guard.url)
    assert (outcome.outcome, outcome.status, outcome.body) == ("guard_rejected", status, b'{"error":"text too long"}')
    assert str(status) in outcome.message


def test_a_4xx_that_is_not_json_is_passed_back_as_a_json_string(client):
    with answering(400, b"Bad \"input\" \xff") as guard:
        outcome = call(client, guard.url)
    assert outcome.outcome == "guard_rejected"
    assert json.loads(outcome.body) == 'Bad "input" \ufffd'


def test_a_4xx_detail_holding_nan_is_passed_back_as_a_json_string(client):
    with answering(422, b'{"score": NaN}') as guard:
        outcome = call(client, guard.url)
    assert outcome.outcome == "guard_rejected"
    assert json.loads(outcome.body) == '{"score": NaN}'


def test_a_long_non_json_4xx_body_is_cut_to_1_kib(client):
    with answering(400, b"x" * 5000) as guard:
        assert json.loads(call(client, guard.url).body) == "x" * 1024


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_upstream_error(client, status):
    with answering(status, b'{"error": "boom"}') as guard:
        outcome = call(client, guard.url)
    assert (outcome.outcome, outcome.status) == ("upstream_error", status)


def test_a_chunked_answer_is_read_whole(client):
    chunked = b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n"
    with CannedGuard(http_answer(200, chunked, {"Transfer-Encoding": "chunked"})) as guard:
        assert call(client, guard.url) == CallOutcome("success", 200, b'{"a":1}')


def test_an_answer_that_is_not_http_is_upstream_error(client):
    with CannedGuard(b"SSH-2.0-OpenSSH_9.2\r\n\r\n") as guard:
        outcome = call(client, guard.url)
    assert (outcome.outcome, outcome.status) == ("upstream_error", 0)
    assert outcome.message.startswith("the call failed: ")


# -- calls: what is sent, and the deadline ---------------------------------------------------------------------


@pytest.mark.parametrize("expires_at", [NOW, NOW - 0.001, NOW - 3600])
def test_a_deadline_already_past_is_upstream_timeout_without_any_http_call(client, expires_at):
    with answering(200, b"{}") as guard:
        outcome = client.call(guard.url, b"{}", "req-1", expires_at)
    assert outcome.outcome == "upstream_timeout"
    assert guard.connections == 0


def test_request_id_content_type_and_body_are_sent():
    client = GuardClient()
    with answering(200, b'{"ok": true}') as guard:
        call(client, guard.url.replace("/scan", "/v2/scan?mode=fast"), body=b'{"text":"hello"}',
             request_id="req-abc")
    client.close()
    [sent] = guard.received
    assert sent.request_line == "POST /v2/scan?mode=fast HTTP/1.1"
    assert sent.headers["X-Request-ID"] == "req-abc"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Host"] == f"127.0.0.1:{guard.port}"
    assert sent.body == b'{"text":"hello"}'


def test_a_request_id_with_a_line_break_is_refused_before_anything_is_sent():
    client = GuardClient()
    with answering(200, b"{}") as guard:
        outcome = call(client, guard.url, request_id="r\r\nX-Admin: yes")
    client.close()
    assert outcome.outcome == "upstream_error"
    assert guard.connections == 0


def test_an_answer_over_max_response_bytes_is_upstream_error():
    client = GuardClient(max_response_bytes=16)
    with answering(200, b'{"pad":"' + b"x" * 100 + b'"}') as guard:
        outcome = call(client, guard.url)
    client.close()
    assert outcome.outcome == "upstream_error"
    assert "exceeds 16 bytes" in outcome.message


def test_an_answer_of_exactly_max_response_bytes_is_accepted():
    raw = b'{"p":"' + b"x" * 8 + b'"}'
    client = GuardClient(max_response_bytes=len(raw))
    with answering(200, raw) as guard:
        assert call(client, guard.url) == CallOutcome("success", 200, raw)
    client.close()


def test_an_undeclared_oversized_answer_is_caught_while_reading():
    client = GuardClient(max_response_bytes=16)
    body = b'{"pad":"' + b"x" * 100 + b'"}'
    chunked = hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    with CannedGuard(http_answer(200, chunked, {"Transfer-Encoding": "chunked"})) as guard:
        outcome = call(client, guard.url)
    client.close()
    assert (outcome.outcome, outcome.message) == ("upstream_error", "the guard's answer exceeds 16 bytes")


def test_an_answer_that_trickles_past_the_deadline_is_upstream_timeout():
    def trickle(_request: Received) -> Iterator[bytes]:
        # Each byte comes well within any socket timeout, but the whole answer would take far too long.
        yield b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        for _ in range(1000):
            time.sleep(0.05)
            yield b" "

    client = GuardClient()
    with CannedGuard(trickle) as guard:
        start = time.monotonic()
        outcome = client.call(guard.url, b"{}", "r", time.time() + 0.3)
        elapsed = time.monotonic() - start
    client.close()
    assert outcome.outcome == "upstream_timeout"
    assert elapsed < 1.5


def test_an_error_after_the_deadline_counts_as_timeout(monkeypatch):
    clock = {"now": NOW}

    def reset_late(*_args: object) -> tuple[int, bytes]:
        clock["now"] = NOW + 11
        raise ConnectionResetError("reset")

    client = GuardClient(wallclock=lambda: clock["now"])
    monkeypatch.setattr(client._connections, "post", reset_late)
    assert client.call(URL, b"{}", "r", NOW + 10).outcome == "upstream_timeout"


# -- calls: keep-alive connections -----------------------------------------------------------------------------


def test_calls_to_one_guard_share_one_connection():
    client = GuardClient()
    with answering(200, b"{}") as guard:
        outcomes = [call(client, guard.url).outcome for _ in range(5)]
    client.close()
    assert outcomes == ["success"] * 5
    assert (len(guard.received), guard.connections) == (5, 1)


def test_a_connection_the_guard_closed_while_idle_is_replaced_unnoticed():
    client = GuardClient()
    with CannedGuard(http_answer(200, b"{}"), close_after_answer=True) as guard:
        first = call(client, guard.url)
        deadline = time.monotonic() + 5
        while client._connections._connections and not next(iter(
                client._connections._connections.values())).dropped():
            assert time.monotonic() < deadline, "the guard's close never arrived"
        second = call(client, guard.url)
    client.close()
    assert (first.outcome, second.outcome) == ("success", "success")
    assert guard.connections == 2


def test_an_answer_saying_connection_close_is_not_reused():
    client = GuardClient()
    with CannedGuard(http_answer(200, b"{}", {"Connection": "close"}), close_after_answer=True) as guard:
        outcomes = [call(client, guard.url).outcome for _ in range(3)]
    client.close()
    assert outcomes == ["success"] * 3
    assert guard.connections == 3


def test_a_guard_that_closes_without_answering_is_a_connection_failure():
    client = GuardClient()
    with CannedGuard(None) as guard:
        outcome = call(client, guard.url)
    client.close()
    assert (outcome.outcome, outcome.connection_failed) == ("upstream_error", True)
    assert outcome.message == "the guard reset or closed the connection"


# -- health checks ---------------------------------------------------------------------------------------------


def test_health_200_is_healthy(client, mocked):
    mocked.get(HEALTH, json={"status": "ok"})
    outcome = client.check_health(HEALTH, 1.0)
    assert (outcome.state, outcome.status) == (HEALTHY, 200)


def test_health_200_without_json_is_healthy(client, mocked):
    mocked.get(HEALTH, body=b"OK")
    assert client.check_health(HEALTH, 1.0).state == HEALTHY


@pytest.mark.parametrize("word", ["degraded", "DEGRADED", "Degraded"])
def test_health_200_saying_degraded_is_degraded(client, mocked, word):
    mocked.get(HEALTH, json={"status": word})
    outcome = client.check_health(HEALTH, 1.0)
    assert (outcome.state, outcome.status) == (DEGRADED, 200)


@pytest.mark.parametrize("status", [500, 503, 404, 301])
def test_health_non_2xx_is_unhealthy(client, mocked, status):
    mocked.get(HEALTH, status=status, json={"status": "ok"})
    outcome = client.check_health(HEALTH, 1.0)
    assert (outcome.state, outcome.status) == (UNHEALTHY, status)


def test_health_connection_error_is_unhealthy(client, mocked):
    mocked.get(HEALTH, body=requests.ConnectionError("Connection refused"))
    outcome = client.check_health(HEALTH, 1.0)
    assert (outcome.state, outcome.status) == (UNHEALTHY, 0)


def test_health_timeout_is_unhealthy(client, mocked):
    mocked.get(HEALTH, body=requests.ReadTimeout("slow"))
    outcome = client.check_health(HEALTH, 0.5)
    assert outcome.state == UNHEALTHY
    assert "0.5" in outcome.message


# -- real loopback sockets -------------------------------------------------------------------------------------


@contextlib.contextmanager
def listening() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server
    finally:
        server.close()


def test_a_guard_that_accepts_and_never_answers_is_upstream_timeout_within_the_deadline():
    with listening() as server:
        port = server.getsockname()[1]
        client = GuardClient()
        try:
            start = time.monotonic()
            outcome = client.call(f"http://127.0.0.1:{port}/scan", b"{}", "r", time.time() + 0.3)
            elapsed = time.monotonic() - start
        finally:
            client.close()
    assert outcome.outcome == "upstream_timeout"
    assert elapsed < 1.5


def test_a_port_nobody_listens_on_is_upstream_error_refused():
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = GuardClient()
    try:
        outcome = client.call(f"http://127.0.0.1:{port}/scan", b"{}", "r", time.time() + 5)
        health = client.check_health(f"http://127.0.0.1:{port}/health", 1.0)
    finally:
        client.close()
    assert outcome.outcome == "upstream_error"
    assert "refused" in outcome.message
    assert health.state == UNHEALTHY


def test_a_guard_that_resets_the_connection_is_upstream_error():
    with listening() as server:
        port = server.getsockname()[1]
        server.settimeout(5)

        def reset_one() -> None:
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                conn.settimeout(5)
                conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

        thread = threading.Thread(target=reset_one, daemon=True)
        thread.start()
        client = GuardClient()
        try:
            outcome = client.call(f"http://127.0.0.1:{port}/scan", b"{}", "r", time.time() + 5)
        finally:
            client.close()
            thread.join(5)
    assert outcome.outcome == "upstream_error"
    assert outcome.status == 0
    assert outcome.message == "the guard reset or closed the connection"


def test_a_guard_that_answers_over_loopback_is_success():
    """Sanity check of the real-socket path: a one-shot HTTP/1.1 answer is read whole."""
    with listening() as server:
        port = server.getsockname()[1]
        server.settimeout(5)
        reply = b'{"safe":true}'

        def answer_one() -> None:
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(5)
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(reply)).encode() + b"\r\nConnection: close\r\n\r\n" + reply)

        thread = threading.Thread(target=answer_one, daemon=True)
        thread.start()
        client = GuardClient()
        try:
            outcome = client.call(f"http://127.0.0.1:{port}/scan", b"{}", "r", time.time() + 5)
        finally:
            client.close()
            thread.join(5)
    assert outcome == CallOutcome("success", 200, reply)
