"""The container's entry command, run directly on the host as Docker would run it: its ENV, ENTRYPOINT + CMD,
its HEALTHCHECK, and its STOPSIGNAL (Docker itself cannot run on this machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import guard_env
from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, free_port, tagged_pids
from tests.unit.test_container_files import _dockerfile_env, _final_stage

pytestmark = pytest.mark.integration


def test_the_images_entry_command_serves_passes_its_healthcheck_and_stops_on_its_stop_signal(
    guards: dict[str, FakeGuard], tmp_path: Path
) -> None:
    final = dict(_final_stage())
    command = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
    env = {**_dockerfile_env(), **guard_env(guards), "AEYON_PORT": str(free_port()),
           "AEYON_ADMIN_PORT": str(free_port())}
    orch = Orchestrator(env, tmp_path / "serve.log")
    orch.process.kill()  # the harness started `python -m system.cli serve`: run the image's command instead
    orch.process.wait()
    aeyon = Path(sys.executable).parent / command[0]
    orch.process = subprocess.Popen([str(aeyon), *command[1:]], env=orch.env, stdout=orch._log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        orch.wait_ready()
        # AEYON_HOST=0.0.0.0 as in the image: the shim answers on every interface, the actor ports do not.
        assert orch.orchestrate("tokenguard", {"text": "x"}).status_code == 200
        health = json.loads(final["HEALTHCHECK"].split("CMD", 1)[1])
        assert health[0] == "python"
        check = subprocess.run([sys.executable, *health[1:]], env={**os.environ, "AEYON_PORT": str(orch.http_port)},
                               capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr
        assert all(json.loads(line)["level"] for line in orch.log().splitlines() if line.strip())  # JSON logs
        orch.process.send_signal(getattr(signal, final["STOPSIGNAL"]))
        assert orch.process.wait(60) == 0
    finally:
        orch.stop()
    assert tagged_pids(orch.tag) == []
