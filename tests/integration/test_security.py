"""The edge, from the outside: rate limiting, request signing, the IP allowlist behind trusted proxies,
violations counted and escalated, and a shim that slow or greedy clients cannot hold."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests

from system.signing import Signer
from tests.integration.conftest import guard_env
from tests.integration.test_metrics import scrape, value
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import running, wait_for
from tests.support.traffic import find_node

pytestmark = pytest.mark.integration

KEY = "test-signing-key-0123456789"


def _code(response: requests.Response) -> str | None:
    return None if response.status_code == 200 else response.json()["error"]["code"]


def test_each_client_gets_its_budget_at_once_then_429_with_an_honest_retry_after(guards: dict[str, FakeGuard],
                                                                               tmp_path: Path) -> None:
    env = {**guard_env(guards), "SECURITY_MAX_REQUESTS_PER_MINUTE": "30"}
    with running(env, tmp_path / "serve.log") as orch:
        codes = [_code(orch.orchestrate("tokenguard", {"text": "x"})) for _ in range(30)]
        assert codes == [None] * 30  # a fresh client's bucket holds the whole minute's budget
        refused = orch.orchestrate("tokenguard", {"text": "x"})
        assert (refused.status_code, _code(refused)) == (429, "rate_limited")
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2  # 30 a minute: one token every 2 s, part of which has passed already
        # Another client (X-Client-ID) has a budget of its own.
        other = orch.post("/v1/orchestrate", {"service": "tokenguard", "payload": {}},
                          headers={"X-Client-ID": "team-b"})
        assert other.status_code == 200
        # Honest: after Retry-After seconds, the next request is admitted.
        time.sleep(retry_after)
        assert orch.orchestrate("tokenguard", {"text": "x"}).status_code == 200
        samples = scrape(orch)
        assert value(samples, "orchestrator_rate_limit_exceeded_total", identifier="ip:127.0.0.1") == 1
        assert value(samples, "orchestrator_security_violations_total", violation_type="rate_limited") == 1


def test_steady_over_limit_load_is_admitted_at_the_budgets_rate(guards: dict[str, FakeGuard],
                                                                tmp_path: Path) -> None:
    env = {**guard_env(guards), "SECURITY_MAX_REQUESTS_PER_MINUTE": "1200"}  # 20 a second
    with running(env, tmp_path / "serve.log") as orch:
        session = requests.Session()
        session.trust_env = False
        body = json.dumps({"service": "tokenguard", "payload": {}})

        def send() -> int:
            return session.post(orch.base_url + "/v1/orchestrate", data=body, timeout=10).status_code

        while send() == 200:  # spend the first minute's bucket
            pass
        started = time.monotonic()
        admitted = 0
        while time.monotonic() - started < 5.0:  # then ~5 s of load far above 20/s
            admitted += send() == 200
        elapsed = time.monotonic() - started
        expected = 20 * elapsed
        assert abs(admitted - expected) <= 0.05 * expected + 1, (admitted, expected)


def test_signed_requests_are_checked_and_replays_refused(guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    env = {**guard_env(guards), "SECURITY_SECRET_KEY": KEY}
    signer = Signer(KEY)
    with running(env, tmp_path / "serve.log") as orch:
        body = json.dumps({"service": "tokenguard", "payload": {"text": "signed"}}).encode()

        def post(headers: dict[str, str], data: bytes = body) -> requests.Response:
            return orch.post("/v1/orchestrate", data=data, headers={"Content-Type": "application/json", **headers})

        unsigned = post({})
        assert (unsigned.status_code, _code(unsigned)) == (401, "unauthorized")
        good = signer.headers(body)
        assert post(good).status_code == 200
        replay = post(good)
        assert (replay.status_code, _code(replay)) == (401, "unauthorized")
        assert "replay" in replay.json()["error"]["message"]
        assert _code(post(signer.headers(body + b" "), body)) == "unauthorized"  # signed another body
        stale = signer.headers(body, timestamp=int(time.time()) - 301)
        assert "window" in post(stale).json()["error"]["message"]
        wrong_key = Signer("another-key-0123456789").headers(body)
        assert _code(post(wrong_key)) == "unauthorized"
        # Ops endpoints use the admin rule, not signatures.
        assert orch.get("/v1/services").status_code == 200
        samples = scrape(orch)
        assert value(samples, "orchestrator_security_violations_total", violation_type="missing_signature") == 1
        assert value(samples, "orchestrator_security_violations_total", violation_type="replayed_signature") == 1
        assert value(samples, "orchestrator_security_violations_total", violation_type="bad_signature") == 2
        assert value(samples, "orchestrator_security_violations_total", violation_type="stale_timestamp") == 1


def test_the_allowlist_refuses_others_and_believes_x_forwarded_for_only_from_trusted_proxies(
    guards: dict[str, FakeGuard], tmp_path: Path
) -> None:
    env = {**guard_env(guards), "SECURITY_ALLOWED_IPS": "10.0.0.0/8, 2001:db8::/32"}
    with running(env, tmp_path / "untrusted.log") as orch:
        refused = orch.orchestrate("tokenguard", {"text": "x"})
        assert (refused.status_code, _code(refused)) == (403, "forbidden")
        spoofed = orch.post("/v1/orchestrate", {"service": "tokenguard", "payload": {}},
                            headers={"X-Forwarded-For": "10.1.2.3"})
        assert spoofed.status_code == 403  # 127.0.0.1 is no trusted proxy: its X-Forwarded-For is ignored
        assert orch.get("/v1/services").status_code == 403
        assert orch.get("/health").status_code == 200 and orch.get("/ready").status_code == 200
    env["AEYON_TRUSTED_PROXIES"] = "127.0.0.1/32"
    with running(env, tmp_path / "trusted.log") as orch:
        for forwarded, status in (("10.1.2.3", 200), ("203.0.113.9", 403), ("10.9.9.9, 127.0.0.1", 200),
                                  ("2001:db8::7", 200), ("not-an-ip", 403)):
            response = orch.post("/v1/orchestrate", {"service": "tokenguard", "payload": {}},
                                 headers={"X-Forwarded-For": forwarded})
            assert response.status_code == status, (forwarded, response.text)


def test_repeated_violations_from_one_client_trigger_forensic_analysis(guards: dict[str, FakeGuard],
                                                                      tmp_path: Path) -> None:
    env = {**guard_env(guards), "SECURITY_SECRET_KEY": KEY}
    with running(env, tmp_path / "serve.log") as orch:
        for _ in range(12):
            orch.post("/v1/orchestrate", {"service": "tokenguard", "payload": {}}, headers={"X-Client-ID": "mallory"})

        def limiter() -> dict:
            node = find_node(orch.get("/v1/actors").json(), "rate_limiter")
            return node["state"] if node else {}

        wait_for(lambda: limiter().get("forensic_triggered") == 1, 5, "the forensic trigger")
        assert limiter()["violations"] == 12
        samples = scrape(orch)
        assert value(samples, "orchestrator_events_published_total", event_type="FORENSIC_ANALYSIS_TRIGGERED") == 1
        assert value(samples, "orchestrator_events_published_total", event_type="SECURITY_VIOLATION") == 12


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_a_slow_client_is_cut_off_while_others_are_served(guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    env = {**guard_env(guards), "AEYON_HTTP_HEADER_TIMEOUT": "1", "AEYON_HTTP_MAX_CONNECTIONS": "20"}
    with running(env, tmp_path / "serve.log") as orch, socket.create_connection(("127.0.0.1", orch.http_port)) as slow:
        slow.sendall(b"POST /v1/orchestrate HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        started = time.monotonic()
        assert orch.orchestrate("tokenguard", {"text": "meanwhile"}).status_code == 200
        answer = _read_all(slow, 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert time.monotonic() - started < 4


def test_connections_past_the_cap_are_closed_and_the_server_stays_healthy(guards: dict[str, FakeGuard],
                                                                         tmp_path: Path) -> None:
    env = {**guard_env(guards), "AEYON_HTTP_MAX_CONNECTIONS": "5"}
    with running(env, tmp_path / "serve.log") as orch:
        held = [socket.create_connection(("127.0.0.1", orch.http_port)) for _ in range(5)]
        try:
            with socket.create_connection(("127.0.0.1", orch.http_port)) as extra:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert _read_all(extra, 2) == b""  # closed at once
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: orch.get("/health").status_code == 200, 5, "the server after the flood")
