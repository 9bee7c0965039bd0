"""Integration fixtures: real ``aeyon serve`` processes (multiprocTCPBase) in front of real loopback guards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from system.routing import SERVICE_TYPES
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, running

pytestmark = pytest.mark.integration


def guard_env(guards: dict[str, FakeGuard]) -> dict[str, str]:
    """The contract's URL variables pointing at these guards."""
    return {SERVICE_TYPES[t].env_var: g.url for t, g in guards.items()}


@pytest.fixture(scope="module")
def guards() -> Iterator[dict[str, FakeGuard]]:
    """One misbehave-on-command guard per service type, shared by a test module."""
    with contextlib.ExitStack() as stack:
        yield {t: stack.enter_context(FakeGuard()) for t in SERVICE_TYPES}


@pytest.fixture
def fresh_guards(guards: dict[str, FakeGuard]) -> dict[str, FakeGuard]:
    """The module's guards, answering "ok" again and with their request logs cleared."""
    for guard in guards.values():
        guard.set_mode("ok")
        guard.set_health(200, {"status": "healthy"})
        guard.clear()
    return guards


@pytest.fixture(scope="module")
def orchestrator(guards: dict[str, FakeGuard], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator routing to the module's guards, stopped (and checked for leftovers) after the module."""
    log = Path(tmp_path_factory.mktemp("serve")) / "serve.log"
    with running(guard_env(guards), log) as orch:
        yield orch
