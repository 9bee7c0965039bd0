"""The Python gateway, exactly as in the contract, against a running orchestrator."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from actors.messages import Orchestrate, OrchestrationResult
from system.actor_system import join_system, leave_system, root_address
from system.errors import GatewayError
from system.gateway import Gateway
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, free_port

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
