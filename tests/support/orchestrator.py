"""Runs ``aeyon serve`` as a real process for integration tests, and proves that nothing it started outlives it.

Each run gets its own HTTP and admin ports and a unique ``AEYON_TEST_TAG`` in its environment; every process of
the run (the serve process, Thespian's admin and logger, each actor, the reference guards) inherits that
environment, so after stopping, a scan of /proc for the tag finds any process left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from system.routing import SERVICE_TYPES

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``AEYON_TEST_TAG=tag``."""
    needle = f"AEYON_TEST_TAG={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid() and not _zombie(pid)]


def processes(tag: str, name: str) -> list[int]:
    """The pids of a run's processes named ``name`` (actors name their process after their class)."""
    return [pid for pid in tagged_pids(tag) if _cmdline(pid) == name[:15]]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any orchestrator setting, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AEYON_", "SECURITY_", "GUARDIAN_")) and k != "DISABLE_HEALTH_CHECKS"
           and k not in {t.env_var for t in SERVICE_TYPES.values()}}
    env.update(overrides)
    return env


class Orchestrator:
    """A running ``aeyon serve`` process."""

    def __init__(self, env: Mapping[str, str], log_path: Path):
        self.http_port = int(env.get("AEYON_PORT") or free_port())
        self.admin_port = int(env.get("AEYON_ADMIN_PORT") or free_port())
        self.tag = uuid.uuid4().hex
        # Every test client comes from 127.0.0.1: without a large budget the default 100 a minute would limit
        # tests that are not about rate limiting. Those that are set their own.
        self.env = clean_env({"SECURITY_MAX_REQUESTS_PER_MINUTE": "10000000", "AEYON_DRAIN_GRACE": "0.2", **env,
                              "AEYON_PORT": str(self.http_port), "AEYON_ADMIN_PORT": str(self.admin_port),
                              "AEYON_TEST_TAG": self.tag})
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "system.cli", "serve"], env=self.env, cwd=REPO,
                                        stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.base_url = f"http://127.0.0.1:{self.http_port}"
        self.session = requests.Session()
        self.session.trust_env = False

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until ``GET /ready`` answers 200 (fails early with the log if the process exits)."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"aeyon serve exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(requests.RequestException):
                return self.session.get(self.base_url + "/ready", timeout=1).status_code == 200
            return False

        wait_for(ready, timeout, "the orchestrator to be ready", interval=0.05)

    def log(self) -> str:
        """What the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, body: Any = None, *, timeout: float = 10, **kwargs: Any) -> requests.Response:
        """POST JSON (or ``data=`` bytes) to the shim."""
        if body is not None:
            kwargs["json"] = body
        return self.session.post(self.base_url + path, timeout=timeout, **kwargs)

    def get(self, path: str, *, timeout: float = 10, **kwargs: Any) -> requests.Response:
        """GET from the shim."""
        return self.session.get(self.base_url + path, timeout=timeout, **kwargs)

    def orchestrate(self, service: str, payload: Any, **fields: Any) -> requests.Response:
        """``POST /v1/orchestrate``."""
        timeout = float(fields.get("timeout") or 30) + 10
        return self.post("/v1/orchestrate", {"service": service, "payload": payload, **fields}, timeout=timeout)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``aeyon ARGS`` against this orchestrator."""
        return subprocess.run([sys.executable, "-m", "system.cli", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self, how: str = "cli") -> int:
        """Stop it (``aeyon stop``, or a signal to the serve process) and return serve's exit status.

        Raises AssertionError if any process of this run is still alive afterwards (and kills them).
        """
        try:
            if self.process.poll() is None:
                if how == "cli":
                    # --now: tests leave hung calls behind; the drain has tests of its own.
                    self.cli("stop", "--now", timeout=STOP_TIMEOUT_S)
                else:
                    self.process.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
            try:
                code = self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
            leftovers = tagged_pids(self.tag)
            if leftovers:
                # Thespian's children exit a moment after the admin: give them that moment, no more.
                with contextlib.suppress(AssertionError):
                    wait_for(lambda: not tagged_pids(self.tag), 5.0, "processes to exit", interval=0.05)
                leftovers = tagged_pids(self.tag)
            if leftovers:
                leftovers = [f"{pid} {_cmdline(pid)}" for pid in leftovers]  # type: ignore[misc]
                for pid in tagged_pids(self.tag):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"processes left behind after stop: {leftovers}")
            return code
        finally:
            self.session.close()
            self._log.close()


@contextlib.contextmanager
def running(env: Mapping[str, str], log_path: Path, *, ready: bool = True) -> Iterator[Orchestrator]:
    """Start an orchestrator, wait for it to be ready, and always stop it (failing on leftovers)."""
    orch = Orchestrator(env, log_path)
    try:
        if ready:
            orch.wait_ready()
        yield orch
    finally:
        orch.stop()


class Member:
    """A running ``aeyon serve --join`` process: a member lending its actor system to a leader (multi-node)."""

    def __init__(self, leader: Orchestrator, name: str, guards: str, log_path: Path):
        self.name = name
        self.admin_port = free_port()
        self.tag = uuid.uuid4().hex
        self.env = clean_env({"AEYON_ADMIN_PORT": str(self.admin_port), "AEYON_TEST_TAG": self.tag})
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "system.cli", "serve", "--join", f"127.0.0.1:{leader.admin_port}",
             "--guards", guards, "--name", name],
            env=self.env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_joined(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the member says the leader acknowledged it."""

        def joined() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the member exited with {self.process.returncode}:\n{self.log()}")
            return f"member {self.name} joined the leader" in self.log()

        wait_for(joined, timeout, f"member {self.name} to join", interval=0.05)

    def log(self) -> str:
        """What the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def pids(self) -> list[int]:
        """Every live process of this member (its serve process, admin, logger and actors)."""
        return tagged_pids(self.tag)

    def kill(self) -> None:
        """SIGKILL every process of the member at once, as a machine that loses power would."""
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM (it leaves the convention) and return its exit status (None if it was killed); raise
        AssertionError if any of its processes is left afterwards (and kill them)."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                code: int | None = self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not self.pids(), 5.0, "the member's processes to exit", interval=0.05)
            leftovers = self.pids()
            if leftovers:
                described = [f"{pid} {_cmdline(pid)}" for pid in leftovers]
                for pid in leftovers:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"processes of member {self.name} left behind: {described}")
            return code if code is not None and code >= 0 else None
        finally:
            self._log.close()
