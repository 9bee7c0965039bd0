"""`aeyon serve` and `aeyon stop` as processes: start-up, the embedded default, refusing bad settings, and
stopping every process (by `aeyon stop`, SIGTERM or SIGINT)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import REPO, Orchestrator, clean_env, free_port, running, tagged_pids, wait_for

pytestmark = pytest.mark.integration


def test_embedded_default_serves_the_readme_example(tmp_path: Path) -> None:
    with running({}, tmp_path / "serve.log") as orch:
        response = orch.orchestrate("tokenguard", {"text": "key AKIAIOSFODNN7EXAMPLE"})
        assert response.status_code == 200, response.text
        result = response.json()["result"]
        assert result["safe"] is False
        assert [f["type"] for f in result["findings"]] == ["aws_access_key_id"]
        assert "started the built-in reference guards" in orch.log()
        services = orch.get("/v1/services").json()["services"]
        assert len(services) == 6
        assert {s["source"] for s in services} == {"embedded"}
        assert all(s["health"] == "HEALTHY" for s in services)


@pytest.mark.parametrize("how", ["cli", "sigterm", "sigint"])
def test_stopping_leaves_no_process_behind(guards: dict[str, FakeGuard], tmp_path: Path, how: str) -> None:
    orch = Orchestrator(guard_env(guards), tmp_path / "serve.log")
    try:
        orch.wait_ready()
        assert orch.orchestrate("tokenguard", {"text": "x"}).status_code == 200
        assert len(tagged_pids(orch.tag)) >= 10  # serve, admin, logger, root, control actors, shim, guards...
    finally:
        code = orch.stop(how)
    assert code == 0
    assert tagged_pids(orch.tag) == []


def test_aeyon_stop_exits_non_zero_when_nothing_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "system.cli", "stop", "--admin-port", str(free_port())],
                         capture_output=True, text=True, cwd=REPO, timeout=30, env=clean_env({}))
    assert out.returncode != 0
    assert "no orchestrator answers on admin port" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("variable", "value"), [
    ("AEYON_PORT", "eighty"),
    ("SECURITY_ALLOWED_IPS", "10.0.0.0/33"),
    ("TOKENGUARD_URL", "ftp://example"),
    ("DISABLE_HEALTH_CHECKS", "maybe"),
    ("SECURITY_MAX_REQUESTS_PER_MINUTE", "-1"),
])
def test_a_bad_setting_is_refused_at_start_naming_the_variable(variable: str, value: str) -> None:
    env = clean_env({variable: value, "AEYON_PORT": str(free_port()), "AEYON_ADMIN_PORT": str(free_port())})
    env[variable] = value
    out = subprocess.run([sys.executable, "-m", "system.cli", "serve"], capture_output=True, text=True, cwd=REPO,
                         timeout=30, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"aeyon: {variable}:"), out.stderr


def test_serve_refuses_an_admin_port_already_in_use(orchestrator: Orchestrator, tmp_path: Path) -> None:
    env = clean_env({"AEYON_PORT": str(free_port()), "AEYON_ADMIN_PORT": str(orchestrator.admin_port),
                     "TOKENGUARD_URL": "http://127.0.0.1:9"})
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "system.cli", "serve"], capture_output=True, text=True, cwd=REPO,
                         timeout=60, env=env)
    assert out.returncode == 1
    assert "AEYON_ADMIN_PORT" in out.stderr and "in use" in out.stderr
    assert time.monotonic() - started < 30
    # The running orchestrator was not disturbed.
    assert orchestrator.get("/health").status_code == 200


def test_serve_fails_clearly_when_the_http_port_is_taken(guards: dict[str, FakeGuard], tmp_path: Path) -> None:
    with running(guard_env(guards), tmp_path / "first.log") as first:
        second = Orchestrator({**guard_env(guards), "AEYON_PORT": str(first.http_port)}, tmp_path / "second.log")
        try:
            code = second.process.wait(60)
        finally:
            second.stop()
        assert code == 1
        assert "cannot listen on" in second.log()


def test_stopping_with_a_worker_blocked_in_a_long_call_leaves_no_process_behind(
    guards: dict[str, FakeGuard], tmp_path: Path
) -> None:
    guards["trustguard"].set_mode("hang")
    pool = ThreadPoolExecutor(1)
    try:
        orch = Orchestrator(guard_env(guards), tmp_path / "serve.log")
        try:
            orch.wait_ready()
            pending = pool.submit(orch.orchestrate, "trustguard", {"text": "x"}, timeout=120)
            wait_for(lambda: guards["trustguard"].count(method="POST") >= 1, 10, "the call to hang")
            started = time.monotonic()
        finally:
            code = orch.stop()  # raises if any process is left
        stopped_s = time.monotonic() - started
        assert code == 0
        assert stopped_s < 25  # Thespian gives up on the blocked worker after 10 s; what is left is killed
        # The caller was not left hanging either: its connection closed with the shim.
        with contextlib.suppress(Exception):
            pending.result(timeout=10)
        assert pending.done()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        guards["trustguard"].set_mode("ok")
