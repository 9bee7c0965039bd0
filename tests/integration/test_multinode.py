"""Multi-node: a leader and two members (``aeyon serve --join``) on loopback admin ports, each a real actor system
of its own processes. Guards are placed on members by capability; a member SIGKILLed mid-traffic has its guards
placed again and every request answered; a member that leaves (SIGTERM) hands its guards back; nothing is left."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Member, Orchestrator, running, wait_for
from tests.support.traffic import Traffic, find_node

pytestmark = pytest.mark.integration

SERVICES = ("tokenguard", "trustguard", "biasguard")
# After a member is SIGKILLed the leader notices within three missed check-ins (1 s each), then places again.
RECOVERY_TIMEOUT_S = 15.0


def placement(orch: Orchestrator) -> dict[str, str]:
    """Where the root says each guard runs."""
    return dict(orch.get("/v1/actors").json()["state"].get("placement", {}))


def supervisor_pid(orch: Orchestrator, service: str) -> int | None:
    node = find_node(orch.get("/v1/actors").json(), service)
    return node["pid"] if node is not None and node.get("responsive") else None


def succeeds(orch: Orchestrator, service: str) -> bool:
    return orch.orchestrate(service, {"text": "probe"}, timeout=2).status_code == 200


@pytest.fixture
def three_guards() -> Iterator[dict[str, FakeGuard]]:
    with contextlib.ExitStack() as stack:
        yield {service: stack.enter_context(FakeGuard()) for service in SERVICES}


@contextlib.contextmanager
def member(leader: Orchestrator, name: str, guards: str, tmp_path: Path) -> Iterator[Member]:
    m = Member(leader, name, guards, tmp_path / f"{name}.log")
    try:
        m.wait_joined()
        yield m
    finally:
        m.stop()


def test_guards_are_placed_by_capability_and_survive_a_member_killed_mid_traffic(
        three_guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    with running(guard_env(three_guards), tmp_path / "leader.log") as leader, \
            member(leader, "m1", "tokenguard", tmp_path) as m1, \
            member(leader, "m2", "*", tmp_path) as m2:
        # m1 may host tokenguard only; m2 any guard: tokenguard goes to m1, the two others to m2.
        wanted = {"tokenguard": "m1", "trustguard": "m2", "biasguard": "m2"}
        wait_for(lambda: placement(leader) == wanted, RECOVERY_TIMEOUT_S, f"placement {wanted}")
        # The supervisors really run in the members' processes, and calls through them succeed.
        wait_for(lambda: supervisor_pid(leader, "tokenguard") in m1.pids(), 5, "tokenguard's supervisor on m1")
        for service in ("trustguard", "biasguard"):
            wait_for(lambda s=service: supervisor_pid(leader, s) in m2.pids(), 5, f"{service}'s supervisor on m2")
        for service in SERVICES:
            wait_for(lambda s=service: succeeds(leader, s), 10, f"{service} to answer through its member")
        tree = leader.get("/v1/actors").json()
        assert {m["name"]: m["hosting"] for m in tree["state"]["members"]} == {
            "m1": ["tokenguard"], "m2": ["biasguard", "trustguard"]}
        # The commands that reach an orchestrator refuse a member's admin port (no root is made there).
        pids_before = sorted(m1.pids())
        refused = leader.cli("services", "--admin-port", str(m1.admin_port))
        assert refused.returncode != 0
        assert "is member 'm1' of a multi-node orchestrator" in refused.stderr
        assert sorted(m1.pids()) == pids_before

        with Traffic(leader.base_url, SERVICES, threads=2, timeout_s=3) as traffic:
            wait_for(lambda: all(traffic.count(s) >= 20 for s in SERVICES), 20, "traffic through every guard")
            before_kill = traffic.count("tokenguard")
            m1.kill()
            killed_at = time.monotonic()
            # tokenguard is placed again on the only member left that may host it (m2 takes any guard).
            wait_for(lambda: placement(leader).get("tokenguard") == "m2", RECOVERY_TIMEOUT_S,
                     "tokenguard placed again after m1 was killed")
            replaced_after_s = time.monotonic() - killed_at
            wait_for(lambda: supervisor_pid(leader, "tokenguard") in m2.pids(), 5, "tokenguard's new supervisor")
            # Requests flow again: 20 more successes for tokenguard after the re-placement.
            settled = len([a for a in traffic.by_service("tokenguard") if a.status == 200])
            wait_for(lambda: len([a for a in traffic.by_service("tokenguard") if a.status == 200]) >= settled + 20,
                     15, "tokenguard answering again")
        assert not traffic.errors, traffic.errors[:5]
        answers = traffic.answers
        # Exactly one answer per request, each echoing its own id.
        ids = collections.Counter(a.request_id for a in answers)
        assert max(ids.values()) == 1
        assert all(a.echoed_id == a.request_id for a in answers)
        # The other guards were not touched; tokenguard's requests in flight on m1 were answered with an error
        # (its supervisor was replaced, or their time ran out), never lost.
        codes: dict[str, collections.Counter[Any]] = {
            s: collections.Counter((a.status, a.code) for a in traffic.by_service(s)) for s in SERVICES}
        for service in ("trustguard", "biasguard"):
            assert set(codes[service]) == {(200, None)}, codes[service]
        assert set(codes["tokenguard"]) <= {(200, None), (502, "upstream_error"), (504, "upstream_timeout"),
                                           (503, "service_unavailable")}, codes["tokenguard"]
        assert traffic.count("tokenguard") > before_kill
        assert replaced_after_s < RECOVERY_TIMEOUT_S
        assert "member m1 left or was lost" in leader.log()

        # m2 leaves in order (SIGTERM): its guards come back to the leader and keep answering.
        assert m2.stop() == 0
        wait_for(lambda: set(placement(leader).values()) == {"leader"}, RECOVERY_TIMEOUT_S,
                 "every guard back on the leader")
        leader_pids = set(leader_processes(leader))
        for service in SERVICES:
            wait_for(lambda s=service: succeeds(leader, s), 10, f"{service} answering on the leader")
            assert supervisor_pid(leader, service) in leader_pids
        assert leader.get("/v1/actors").json()["state"]["members"] == []


def leader_processes(orch: Orchestrator) -> list[int]:
    from tests.support.orchestrator import tagged_pids

    return tagged_pids(orch.tag)


def test_a_member_that_joins_takes_guards_over_without_failing_requests(
        three_guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    with running(guard_env(three_guards), tmp_path / "leader.log") as leader:
        for service in SERVICES:
            wait_for(lambda s=service: succeeds(leader, s), 10, f"{service} answering on the leader")
        with Traffic(leader.base_url, SERVICES, threads=2, timeout_s=3) as traffic:
            wait_for(lambda: all(traffic.count(s) >= 20 for s in SERVICES), 20, "traffic through every guard")
            old_pids = [supervisor_pid(leader, s) for s in ("trustguard", "biasguard")]
            assert None not in old_pids
            with member(leader, "m1", "trustguard,biasguard", tmp_path) as m1:
                wait_for(lambda: placement(leader) == {"tokenguard": "leader", "trustguard": "m1",
                                                       "biasguard": "m1"}, RECOVERY_TIMEOUT_S, "the move to m1")
                moved = traffic.count("trustguard")
                wait_for(lambda: traffic.count("trustguard") >= moved + 20, 15, "trustguard answering on m1")
                assert supervisor_pid(leader, "trustguard") in m1.pids()
                # The old supervisors answered what they had taken, then stopped (their processes exited).
                wait_for(lambda: not set(old_pids) & set(leader_processes(leader)), 10, "the old supervisors to stop")
                traffic.stop()
        # A planned move fails no request: every answer is a success.
        assert not traffic.errors, traffic.errors[:5]
        assert {(a.status, a.code) for a in traffic.answers} == {(200, None)}
