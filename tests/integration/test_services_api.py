"""GET/POST/DELETE /v1/services and `aeyon services`: the registry as operators see and change it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard, last_post
from tests.support.orchestrator import Orchestrator, running, wait_for

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token-for-tests"


def test_services_lists_every_guard_with_its_live_state(orchestrator: Orchestrator,
                                                        fresh_guards: dict[str, FakeGuard]) -> None:
    services = orchestrator.get("/v1/services").json()["services"]
    assert [s["name"] for s in services] == sorted(fresh_guards)
    for service in services:
        assert service["service_type"] == service["name"]
        assert service["url"] == fresh_guards[service["name"]].url
        assert service["health"] == "HEALTHY"
        assert service["circuit"] in ("closed", "open", "half_open")
        assert service["in_flight"] == 0
        assert service["source"] == "env"


def test_register_route_and_unregister_a_service(orchestrator: Orchestrator,
                                                 fresh_guards: dict[str, FakeGuard]) -> None:
    guard = fresh_guards["securityguard"]
    created = orchestrator.post("/v1/services", {"name": "sec-eu", "service_type": "securityguard",
                                                 "url": guard.url, "metadata": {"region": "eu"}})
    assert created.status_code == 201, created.text
    assert created.json() == {"name": "sec-eu", "service_type": "securityguard", "url": guard.url,
                              "metadata": {"region": "eu"}, "source": "api"}
    # Its first health check runs at once; until it passes the guard gets no traffic.
    wait_for(lambda: orchestrator.orchestrate("sec-eu", {"text": "x"}).status_code == 200, 10,
             "the new service to serve")
    listed = {s["name"]: s for s in orchestrator.get("/v1/services").json()["services"]}
    assert listed["sec-eu"]["metadata"] == {"region": "eu"}
    assert last_post(guard).path == "/validate"

    assert orchestrator.session.delete(orchestrator.base_url + "/v1/services/sec-eu", timeout=10).status_code == 204
    gone = orchestrator.orchestrate("sec-eu", {"text": "x"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_service"
    again = orchestrator.session.delete(orchestrator.base_url + "/v1/services/sec-eu", timeout=10)
    assert again.status_code == 404 and again.json()["error"]["code"] == "unknown_service"


@pytest.mark.parametrize("body", [
    {"service_type": "tokenguard", "url": "http://127.0.0.1:1"},
    {"name": "Bad Name", "service_type": "tokenguard", "url": "http://127.0.0.1:1"},
    {"name": "x", "service_type": "nosuchtype", "url": "http://127.0.0.1:1"},
    {"name": "x", "service_type": "tokenguard", "url": "ftp://127.0.0.1:1"},
    {"name": "x", "service_type": "tokenguard", "url": "http://user:pw@127.0.0.1:1"},
    {"name": "x", "service_type": "tokenguard", "url": "http://127.0.0.1:1", "metadata": [1]},
])
def test_bad_registrations_are_400_invalid_request(orchestrator: Orchestrator, body: dict) -> None:
    response = orchestrator.post("/v1/services", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_registering_a_taken_name_is_409_conflict(orchestrator: Orchestrator) -> None:
    response = orchestrator.post("/v1/services", {"name": "tokenguard", "service_type": "tokenguard",
                                                  "url": "http://127.0.0.1:9"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_cli_services_prints_a_table(orchestrator: Orchestrator) -> None:
    out = orchestrator.cli("services")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SERVICE_TYPE", "URL", "HEALTH", "CIRCUIT", "IN_FLIGHT"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(
        ["tokenguard", "trustguard", "contextguard", "biasguard", "healthguard", "securityguard"])


@pytest.fixture(scope="module")
def guarded(guards: dict[str, FakeGuard], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator with AEYON_ADMIN_TOKEN set."""
    env = {**guard_env(guards), "AEYON_ADMIN_TOKEN": TOKEN}
    with running(env, Path(tmp_path_factory.mktemp("guarded")) / "serve.log") as orch:
        yield orch


def test_with_an_admin_token_mutations_need_the_bearer_token(guarded: Orchestrator,
                                                             fresh_guards: dict[str, FakeGuard]) -> None:
    body = {"name": "tok2", "service_type": "tokenguard", "url": fresh_guards["tokenguard"].url}
    missing = guarded.post("/v1/services", body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    wrong = guarded.post("/v1/services", body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = guarded.post("/v1/services", body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 201
    assert guarded.session.delete(guarded.base_url + "/v1/services/tok2", timeout=10).status_code == 401
    deleted = guarded.session.delete(guarded.base_url + "/v1/services/tok2", timeout=10,
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert deleted.status_code == 204
    # Reading stays open.
    assert guarded.get("/v1/services").status_code == 200
