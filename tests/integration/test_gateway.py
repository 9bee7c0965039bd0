"""The Python gateway, exactly as in the contract, against a running orchestrator."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from actors.messages import Orchestrate, OrchestrateBatch, OrchestrationResult, ResultsBatch
from system.actor_system import join_system, leave_system, root_address
from system.errors import GatewayError
from system.gateway import Gateway
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, free_port
from tests.support.traffic import find_node

pytestmark = pytest.mark.integration


def test_gateway_orchestrate_as_in_the_contract(orchestrator: Orchestrator, fresh_guards: dict[str, FakeGuard]) -> None:
    with Gateway.connect(admin_port=orchestrator.admin_port) as gw:
        res = gw.orchestrate("tokenguard", {"text": "..."}, request_id="req-1", timeout=30)
    assert res.status == "success"
    assert res.result["echo"] == {"text": "..."}
    assert res.error_code is None
    assert res.duration_ms > 0
    assert res.request_id == "req-1"


def test_gateway_errors_carry_the_contract_codes(orchestrator: Orchestrator,
                                                 fresh_guards: dict[str, FakeGuard]) -> None:
    fresh_guards["biasguard"].set_mode("status", code=400, body={"reason": "empty"})
    fresh_guards["healthguard"].set_mode("status", code=500)
    fresh_guards["trustguard"].set_mode("hang")
    with Gateway.connect(admin_port=orchestrator.admin_port) as gw:
        unknown = gw.orchestrate("nosuch", {})
        invalid = gw.orchestrate("tokenguard", {}, timeout=0)
        bad_id = gw.orchestrate("tokenguard", {}, request_id="no spaces allowed")
        rejected = gw.orchestrate("biasguard", {"text": "x"})
        failed = gw.orchestrate("healthguard", {"text": "x"})
        late = gw.orchestrate("trustguard", {"text": "x"}, timeout=0.5)
    assert (unknown.status, unknown.error_code, unknown.http_status) == ("error", "unknown_service", 404)
    assert invalid.error_code == "invalid_request"
    assert bad_id.error_code == "invalid_request"
    assert (rejected.error_code, rejected.http_status, rejected.error_detail) == ("guard_rejected", 400,
                                                                                  {"reason": "empty"})
    assert failed.error_code == "upstream_error"
    assert late.error_code == "upstream_timeout"


def test_gateway_from_16_threads_matches_every_answer_to_its_request(
    orchestrator: Orchestrator, fresh_guards: dict[str, FakeGuard]
) -> None:
    with Gateway.connect(admin_port=orchestrator.admin_port) as gw, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: gw.orchestrate("tokenguard", {"n": i}, request_id=f"t-{i}"), range(160)))
    assert [r.request_id for r in results] == [f"t-{i}" for i in range(160)]
    assert all(r.ok for r in results)
    assert [r.result["echo"]["n"] for r in results] == list(range(160))


def test_the_raw_actor_protocol_answers_orchestrate_at_the_root(orchestrator: Orchestrator,
                                                                fresh_guards: dict[str, FakeGuard]) -> None:
    asys = join_system(orchestrator.admin_port)
    try:
        reply = asys.ask(root_address(asys), Orchestrate("raw-1", "tokenguard", {"text": "raw"}), 10)
    finally:
        leave_system(asys)
    assert isinstance(reply, OrchestrationResult)
    assert (reply.request_id, reply.status, reply.result["echo"]) == ("raw-1", "success", {"text": "raw"})


def test_gateway_lists_registers_and_unregisters_services(orchestrator: Orchestrator,
                                                          fresh_guards: dict[str, FakeGuard]) -> None:
    with Gateway.connect(admin_port=orchestrator.admin_port) as gw:
        names = [s["name"] for s in gw.services()]
        assert names == sorted(["tokenguard", "trustguard", "contextguard", "biasguard", "healthguard",
                                "securityguard"])
        registered = gw.register("gw-extra", "tokenguard", fresh_guards["tokenguard"].url, {"team": "a"})
        assert registered.spec.name == "gw-extra"
        with pytest.raises(GatewayError, match="conflict"):
            gw.register("gw-extra", "tokenguard", fresh_guards["tokenguard"].url)
        gw.unregister("gw-extra")
        with pytest.raises(GatewayError, match="unknown_service"):
            gw.unregister("gw-extra")


def test_connect_fails_clearly_when_nothing_runs_on_the_admin_port() -> None:
    with pytest.raises(GatewayError, match="no orchestrator answers on admin port"):
        Gateway.connect(admin_port=free_port())


def test_calls_from_many_threads_travel_in_batches_and_each_gets_its_own_answer(
    orchestrator: Orchestrator, fresh_guards: dict[str, FakeGuard]
) -> None:
    def shim_state() -> dict[str, int]:
        node = find_node(orchestrator.get("/v1/actors").json(), "http_shim-0")
        assert node is not None
        return dict(node["state"])

    before = shim_state()
    with Gateway.connect(admin_port=orchestrator.admin_port) as gw, ThreadPoolExecutor(16) as pool:
        # Eight threads use the same request id at once: each still gets exactly one answer.
        same = list(pool.map(lambda i: gw.orchestrate("tokenguard", {"n": i}, request_id="same-id"), range(8)))
        results = list(pool.map(lambda i: gw.orchestrate("tokenguard", {"n": i}, request_id=f"b-{i}"), range(320)))
    assert [r.request_id for r in same] == ["same-id"] * 8
    assert sorted(r.result["echo"]["n"] for r in same) == list(range(8))
    assert [r.result["echo"]["n"] for r in results] == list(range(320))
    after = shim_state()
    # Every call came in a batch, and calls made while others were out left together.
    assert after["batched_orchestrates"] - before["batched_orchestrates"] == 328
    assert after["call_batches"] - before["call_batches"] < 328
    assert after["largest_call_batch"] > 1


def test_a_raw_orchestrate_batch_at_the_root_is_answered_call_by_call(
    orchestrator: Orchestrator, fresh_guards: dict[str, FakeGuard]
) -> None:
    calls = (Orchestrate("rb-1", "tokenguard", {"text": "a"}), Orchestrate("rb-2", "nosuch", {}),
             Orchestrate("rb-3", "tokenguard", {"text": "b"}, timeout=0))
    asys = join_system(orchestrator.admin_port)
    answers: dict[str, OrchestrationResult] = {}
    try:
        asys.tell(root_address(asys), OrchestrateBatch(calls))
        deadline = time.monotonic() + 10
        while len(answers) < 3 and time.monotonic() < deadline:
            reply = asys.listen(1.0)
            if isinstance(reply, ResultsBatch):
                for result in reply.results:
                    assert result.request_id not in answers
                    answers[result.request_id] = result
    finally:
        leave_system(asys)
    assert (answers["rb-1"].status, answers["rb-1"].result["echo"]) == ("success", {"text": "a"})
    assert answers["rb-2"].error_code == "unknown_service"
    assert answers["rb-3"].error_code == "invalid_request"
