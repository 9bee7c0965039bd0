"""GuardClient: every way a guard call or health check can end, mapped to the contract's outcomes.

Most tests use ``responses``; the last few use tiny loopback servers to produce real hangs, refusals and resets.
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


def call(client: GuardClient, body: bytes = b'{"text":"hi"}', request_id: str = "req-1") -> CallOutcome:
    return client.call(URL, body, request_id, NOW + 10)


# -- calls -----------------------------------------------------------------------------------------------------


def test_200_json_is_success_with_the_raw_bytes(client, mocked):
    raw = b'{ "safe": true,  "score": 0.10 }'
    mocked.post(URL, body=raw, status=200, content_type="application/json")
    outcome = call(client)
    assert outcome == CallOutcome("success", 200, raw)


@pytest.mark.parametrize("status", [201, 202, 299])
def test_any_2xx_with_json_is_success(client, mocked, status):
    mocked.post(URL, body=b"[1,2]", status=status)
    outcome = call(client)
    assert (outcome.outcome, outcome.status, outcome.body) == ("success", status, b"[1,2]")


def test_204_without_a_body_is_not_a_json_answer(client, mocked):
    mocked.post(URL, status=204)
    outcome = call(client)
    assert (outcome.outcome, outcome.status) == ("upstream_error", 204)


@pytest.mark.parametrize("raw", [b"not json", b"", b"{", b"<html>ok</html>"])
def test_200_with_invalid_json_is_upstream_error(client, mocked, raw):
    mocked.post(URL, body=raw, status=200)
    outcome = call(client)
    assert (outcome.outcome, outcome.status) == ("upstream_error", 200)
    assert "invalid JSON" in outcome.message


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_upstream_error_and_not_followed(client, mocked, status):
    mocked.post(URL, status=status, headers={"Location": "http://elsewhere.test/scan"})
    mocked.post("http://elsewhere.test/scan", json={"followed": True})
    outcome = call(client)
    assert (outcome.outcome, outcome.status) == ("upstream_error", status)
    assert [c.request.url for c in mocked.calls] == [URL]


@pytest.mark.parametrize("status", [400, 404, 422, 429])
def test_a_4xx_is_guard_rejected_with_its_json_body(client, mocked, status):
    mocked.post(URL, body=b'{"error":"text too long"}', status=status)
    outcome = call(client)
    assert (outcome.outcome, outcome.status, outcome.body) == ("guard_rejected", status, b'{"error":"text too long"}')
    assert str(status) in outcome.message


def test_a_4xx_that_is_not_json_is_passed_back_as_a_json_string(client, mocked):
    mocked.post(URL, body=b"Bad \"input\" \xff", status=400)
    outcome = call(client)
    assert outcome.outcome == "guard_rejected"
    assert json.loads(outcome.body) == 'Bad "input" \ufffd'


def test_a_long_non_json_4xx_body_is_cut_to_1_kib(client, mocked):
    mocked.post(URL, body=b"x" * 5000, status=400)
    assert json.loads(call(client).body) == "x" * 1024


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_is_upstream_error(client, mocked, status):
    mocked.post(URL, json={"error": "boom"}, status=status)
    outcome = call(client)
    assert (outcome.outcome, outcome.status) == ("upstream_error", status)


def test_a_connection_error_is_upstream_error(client, mocked):
    mocked.post(URL, body=requests.ConnectionError("Connection refused"))
    outcome = call(client)
    assert (outcome.outcome, outcome.status) == ("upstream_error", 0)
    assert outcome.message == "the guard refused the connection"


def test_a_read_timeout_is_upstream_timeout(client, mocked):
    mocked.post(URL, body=requests.ReadTimeout("read timed out"))
    assert call(client).outcome == "upstream_timeout"


def test_a_connection_error_after_the_deadline_counts_as_timeout(mocked):
    clock = {"now": NOW}

    def late(request):
        clock["now"] = NOW + 11
        raise requests.ConnectionError("Connection reset by peer")

    mocked.add_callback(responses.POST, URL, callback=late)
    client = GuardClient(wallclock=lambda: clock["now"])
    assert client.call(URL, b"{}", "r", NOW + 10).outcome == "upstream_timeout"


def test_any_other_requests_error_is_upstream_error(client, mocked):
    mocked.post(URL, body=requests.exceptions.InvalidHeader("bad header"))
    outcome = call(client)
    assert outcome.outcome == "upstream_error"
    assert "InvalidHeader" in outcome.message


@pytest.mark.parametrize("expires_at", [NOW, NOW - 0.001, NOW - 3600])
def test_a_deadline_already_past_is_upstream_timeout_without_any_http_call(client, mocked, expires_at):
    mocked.post(URL, json={})
    outcome = client.call(URL, b"{}", "req-1", expires_at)
    assert outcome.outcome == "upstream_timeout"
    assert len(mocked.calls) == 0


def test_request_id_content_type_and_body_are_sent(client, mocked):
    mocked.post(URL, json={"ok": True})
    call(client, body=b'{"text":"hello"}', request_id="req-abc")
    [sent] = mocked.calls
    assert sent.request.headers["X-Request-ID"] == "req-abc"
    assert sent.request.headers["Content-Type"] == "application/json"
    assert sent.request.body == b'{"text":"hello"}'
    assert sent.request.method == "POST"


def test_the_timeout_passed_to_requests_is_bounded_by_the_deadline(mocked):
    client = GuardClient(wallclock=lambda: NOW, connect_timeout_s=5.0)
    mocked.post(URL, json={})
    client.call(URL, b"{}", "r", NOW + 2)
    assert mocked.calls[0].request.req_kwargs["timeout"] == (2, 2)


def test_an_answer_over_max_response_bytes_is_upstream_error(mocked):
    client = GuardClient(wallclock=lambda: NOW, max_response_bytes=16)
    mocked.post(URL, body=b'{"pad":"' + b"x" * 100 + b'"}')
    outcome = client.call(URL, b"{}", "r", NOW + 10)
    assert outcome.outcome == "upstream_error"
    assert "exceeds 16 bytes" in outcome.message


def test_an_answer_of_exactly_max_response_bytes_is_accepted(mocked):
    raw = b'{"p":"' + b"x" * 8 + b'"}'
    client = GuardClient(wallclock=lambda: NOW, max_response_bytes=len(raw))
    mocked.post(URL, body=raw)
    assert client.call(URL, b"{}", "r", NOW + 10) == CallOutcome("success", 200, raw)


def test_an_undeclared_oversized_answer_is_caught_while_reading(mocked):
    client = GuardClient(wallclock=lambda: NOW, max_response_bytes=16)
    mocked.post(URL, body=b'{"pad":"' + b"x" * 100 + b'"}', auto_calculate_content_length=False)
    assert client.call(URL, b"{}", "r", NOW + 10).outcome == "upstream_error"


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


@responses.activate
@pytest.mark.parametrize("body", [b'{"score": NaN}', b'{"score": Infinity}', b'[-Infinity]'])
def test_an_answer_holding_nan_or_infinity_is_not_json_and_is_an_upstream_error(body: bytes) -> None:
    # Found by bin/fuzz: Python's json accepts them, and passing them on would make our answer invalid JSON.
    responses.add(responses.POST, URL, body=body, status=200, content_type="application/json")
    assert GuardClient().call(URL, b"{}", "r1", time.time() + 5).outcome == "upstream_error"


@responses.activate
def test_a_4xx_detail_holding_nan_is_passed_back_as_a_json_string() -> None:
    responses.add(responses.POST, URL, body=b'{"score": NaN}', status=422, content_type="application/json")
    outcome = GuardClient().call(URL, b"{}", "r1", time.time() + 5)
    assert outcome.outcome == "guard_rejected"
    assert json.loads(outcome.body) == '{"score": NaN}'
