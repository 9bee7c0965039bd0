"""The event stream: GET /v1/events (server-sent events), `aeyon events`, the gateway's follow(), each of the
contract's event types delivered, a stalled subscriber that holds up nobody, and the Guardian Zero sink."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from actors.messages.events import EVENT_TYPES
from system.actor_system import join_system, leave_system, root_address
from system.gateway import Gateway
from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import REPO, Orchestrator, running, wait_for
from tests.support.traffic import find_node

pytestmark = pytest.mark.integration

QUICK = {
    "AEYON_HEALTH_INTERVAL": "0.5",
    "AEYON_HEALTH_TIMEOUT": "0.5",
    "AEYON_BREAKER_WINDOW": "5",
    "AEYON_BREAKER_MIN_CALLS": "5",
    "AEYON_BREAKER_OPEN": "1",
    "AEYON_EVENTS_QUEUE": "20",
    "AEYON_EVENTS_ACK_TIMEOUT": "2",
}


class Stream:
    """A GET /v1/events connection read by a thread: events arrive in ``events`` as dicts."""

    def __init__(self, url: str):
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        self.response = requests.get(url, stream=True, timeout=(5, 60))
        assert self.response.status_code == 200
        assert self.response.headers["Content-Type"] == "text/event-stream"
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        event: dict = {}
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                elif line == "" and event:
                    self.events.put(event)
                    event = {}
        except Exception:
            pass

    def drain(self) -> list[dict]:
        """The events read so far and not yet taken."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    def until(self, condition: Callable[[dict], bool], timeout: float = 15.0) -> list[dict]:
        """Every event read so far, once one of them satisfies ``condition``."""

        def arrived() -> bool:
            self.seen.extend(self.drain())
            return any(condition(e) for e in self.seen)

        wait_for(arrived, timeout, "an event on the stream", interval=0.02)
        return self.seen

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def eventful(guards: dict[str, FakeGuard], fresh_guards: dict[str, FakeGuard],
             tmp_path: Path) -> Iterator[Orchestrator]:
    with running({**guard_env(guards), **QUICK}, tmp_path / "serve.log") as orch:
        yield orch


def test_every_event_type_reaches_a_stream_subscriber(eventful: Orchestrator,
                                                      fresh_guards: dict[str, FakeGuard]) -> None:
    stream = Stream(eventful.base_url + "/v1/events?since=0")
    try:
        types: set[str] = set()

        def saw(event_type: str):
            def check(event: dict) -> bool:
                types.add(event["event_type"])
                return event["event_type"] == event_type
            return check

        stream.until(saw("SERVICE_DISCOVERED"))  # replayed from the buffer
        assert eventful.post("/v1/services", {"name": "extra", "service_type": "tokenguard",
                                              "url": fresh_guards["tokenguard"].url}).status_code == 201
        stream.until(saw("SERVICE_REGISTERED"))
        eventful.session.delete(eventful.base_url + "/v1/services/extra", timeout=10)
        stream.until(saw("SERVICE_UNREGISTERED"))
        eventful.orchestrate("tokenguard", {"text": "x"})
        stream.until(saw("REQUEST_ROUTED"))
        fresh_guards["biasguard"].set_mode("status", code=500)
        for _ in range(6):
            eventful.orchestrate("biasguard", {"text": "x"})
        stream.until(saw("REQUEST_FAILED"))
        stream.until(saw("CIRCUIT_BREAKER_OPENED"))
        fresh_guards["biasguard"].set_mode("ok")
        wait_for(lambda: eventful.orchestrate("biasguard", {"text": "x"}).status_code == 200, 10, "recovery")
        for _ in range(3):
            eventful.orchestrate("biasguard", {"text": "x"})
        stream.until(saw("CIRCUIT_BREAKER_CLOSED"))
        fresh_guards["healthguard"].set_health(503)
        stream.until(saw("SERVICE_HEALTH_CHANGED"))
        for _ in range(10):
            eventful.post("/v1/orchestrate", {"service": "tokenguard", "payload": {"a\x00": 1}})
        stream.until(saw("FORENSIC_ANALYSIS_TRIGGERED"))
        assert types >= set(EVENT_TYPES) - {"ARCHITECTURE_REVIEW_REQUESTED", "ACTOR_RESTARTED"}
    finally:
        stream.close()
        fresh_guards["healthguard"].set_health(200)


def test_a_stream_can_ask_for_some_types_and_replays_from_a_sequence(eventful: Orchestrator,
                                                                     fresh_guards: dict[str, FakeGuard]) -> None:
    with Gateway.connect(admin_port=eventful.admin_port) as gw:
        discovered = gw.events(0, ("SERVICE_DISCOVERED",))
    assert sorted(e.data["service_name"] for e in discovered) == sorted(fresh_guards)
    last = discovered[-1].sequence
    stream = Stream(eventful.base_url + f"/v1/events?since={last - 1}&types=SERVICE_DISCOVERED,REQUEST_ROUTED")
    try:
        first = stream.until(lambda e: True)
        assert first[0]["sequence"] == last  # the replay starts right after `since`
        eventful.orchestrate("tokenguard", {"text": "x"})
        seen = stream.until(lambda e: e["event_type"] == "REQUEST_ROUTED")
        assert {e["event_type"] for e in seen} <= {"SERVICE_DISCOVERED", "REQUEST_ROUTED"}
        assert [e["sequence"] for e in seen] == sorted({e["sequence"] for e in seen})  # in order, no repeats
    finally:
        stream.close()
    bad = eventful.get("/v1/events?types=NOPE")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_a_stalled_subscriber_is_dropped_and_holds_up_nobody(eventful: Orchestrator,
                                                            fresh_guards: dict[str, FakeGuard]) -> None:
    # A raw actor-system subscriber that never acknowledges anything.
    from actors.messages import Subscribe

    asys = join_system(eventful.admin_port)
    stream = Stream(eventful.base_url + "/v1/events?types=REQUEST_ROUTED")
    try:
        reply = asys.ask(root_address(asys), Subscribe("stalled", ("REQUEST_ROUTED",), None, "test"), 10)
        assert reply is not None
        for i in range(30):
            assert eventful.orchestrate("tokenguard", {"text": "x"}, request_id=f"stall-{i}").status_code == 200
        got: set[str] = set()

        def all_on_the_stream() -> bool:
            got.update(e["data"]["request_id"] for e in stream.drain())
            return got >= {f"stall-{i}" for i in range(30)}

        # The stalled subscriber's queue holds 20 (AEYON_EVENTS_QUEUE): the stream still gets every event.
        wait_for(all_on_the_stream, 15, "all 30 events on the stream")

        def bus() -> dict:
            node = find_node(eventful.get("/v1/actors").json(), "event_bus")
            return node["state"] if node else {}

        wait_for(lambda: bus().get("removed_subscribers", 0) >= 1, 10, "the stalled subscriber to be dropped")
        assert bus()["dropped_events"] >= 1
    finally:
        stream.close()
        leave_system(asys)


def test_aeyon_events_prints_recent_events_and_follows_new_ones(eventful: Orchestrator) -> None:
    out = eventful.cli("events", "--type", "SERVICE_DISCOVERED", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 6 and {line["event_type"] for line in lines} == {"SERVICE_DISCOVERED"}
    follower = subprocess.Popen([sys.executable, "-m", "system.cli", "events", "--follow", "--type",
                                 "REQUEST_ROUTED", "--json"], env=eventful.env, cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
    try:
        lines_out: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines_out.put(line) for line in follower.stdout], daemon=True).start()  # type: ignore[union-attr]

        def routed() -> bool:
            eventful.orchestrate("tokenguard", {"text": "x"}, request_id="follow-me")
            while not lines_out.empty():
                if json.loads(lines_out.get())["data"]["request_id"] == "follow-me":
                    return True
            return False

        wait_for(routed, 15, "the follower to print the request's event", interval=0.3)
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)


def test_forensic_events_are_posted_to_guardian_zero_with_retries(guards: dict[str, FakeGuard],
                                                                  tmp_path: Path) -> None:
    with FakeGuard() as guardian:
        guardian.set_mode("sequence", modes=[("status", {"code": 503}), ("ok", {})])
        env = {**guard_env(guards), "GUARDIAN_ZERO_ENABLED": "true", "GUARDIAN_ZERO_URL": guardian.url + "/events"}
        with running(env, tmp_path / "serve.log") as orch:
            for _ in range(10):
                orch.post("/v1/orchestrate", {"service": "tokenguard", "payload": {"a\x00": 1}},
                          headers={"X-Client-ID": "mallory"})
            wait_for(lambda: guardian.count(method="POST") >= 2, 15, "the forensic event at Guardian Zero")
            posted = [r for r in guardian.requests if r.method == "POST"]
            assert posted[-1].path == "/events"
            assert posted[-1].body["event_type"] == "FORENSIC_ANALYSIS_TRIGGERED"
            assert posted[-1].body["data"]["identifier"] == "id:mallory"
            assert len(posted) == 2  # one failure, one retry that succeeded


def test_json_logs(guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    with running({**guard_env(guards), "AEYON_LOG_FORMAT": "json"}, tmp_path / "serve.log") as orch:
        orch.orchestrate("tokenguard", {"text": "x"})
        log = orch.log()
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) >= 3
    parsed = [json.loads(line) for line in lines]
    assert all({"ts", "level", "actor", "message"} <= set(p) for p in parsed)
    assert any(p["actor"] == "serve" and "listening on" in p["message"] for p in parsed)
    assert os.path.exists(tmp_path / "serve.log")
