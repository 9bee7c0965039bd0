"""``aeyon serve``: the process that starts the actor system and the root, waits, and stops everything.

It owns the lifecycle: SIGTERM or SIGINT here, ``aeyon stop`` from elsewhere, or the root escalating a restart
storm all end in ``ActorSystem.shutdown()``, which stops every actor process, and in stopping the reference
guards if it started them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

from thespian.actors import ActorSystem

from actors.messages import (
    Drain,
    Reconfigure,
    Reconfigured,
    Refused,
    ShutdownRequested,
    Start,
    Started,
    StartFailed,
    WatchShutdown,
)
from system.actor_system import root_address, start_member, start_system
from system.config import Settings
from system.errors import AeyonError, ConfigError, GatewayError
from system.reaper import reap_session
from system.reload import ENV_FILE, read_env_file, relevant
from system.validation import new_request_id

START_TIMEOUT_S = 20.0
# Past the drain's own deadline, how long to wait for the root before stopping anyway.
DRAIN_SLACK_S = 5.0
GUARDS_START_TIMEOUT_S = 10.0

log = logging.getLogger("aeyon.serve")


class ReferenceGuardsProcess:
    """The built-in reference guards (``python -m system.reference_guards``) in a child process of ours."""

    def __init__(self, process: subprocess.Popen[bytes], urls: dict[str, str]):
        self.process = process
        self.urls = urls

    @classmethod
    def start(cls, host: str = "127.0.0.1") -> ReferenceGuardsProcess:
        """Start them and wait for the line with their URLs."""
        process = subprocess.Popen(
            [sys.executable, "-m", "system.reference_guards", "--host", host],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            close_fds=True,
        )
        assert process.stdout is not None
        deadline = time.monotonic() + GUARDS_START_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or process.poll() is not None:
                process.kill()
                process.wait()
                raise AeyonError("the built-in reference guards did not start")
            readable, _, _ = select.select([process.stdout], [], [], remaining)
            if readable:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        process.stdout.close()
        return cls(process, json.loads(line))

    def stop(self) -> None:
        """Stop them (SIGTERM, then SIGKILL after 5 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _die_with_parent() -> None:
    # If `aeyon serve` is killed outright, the guards it started must not outlive it.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _http_port_problem(host: str, port: int) -> str | None:
    """Why the HTTP port cannot be ours, or None. The shims bind with SO_REUSEPORT (so several can share it),
    which would also let a second orchestrator share it silently; a plain bind first makes sure nobody has it."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror} (AEYON_HOST/AEYON_PORT)"
    return None


def _reload(asys: ActorSystem, root: Any) -> None:
    """SIGHUP: send the settings of AEYON_CONFIG_FILE to the root (its answer is logged by the main loop)."""
    path = os.environ.get(ENV_FILE)
    if not path:
        log.warning("SIGHUP: no %s is set, so there is nothing to reload (POST /v1/config changes settings)", ENV_FILE)
        return
    try:
        values = read_env_file(path)
    except (OSError, ConfigError) as exc:
        log.error("SIGHUP: %s", exc)
        return
    asys.tell(root, Reconfigure(new_request_id(), values))


def serve(settings: Settings, environ: Mapping[str, str] | None = None) -> int:
    """Run the orchestrator until told to stop; the exit status for the command."""
    problem = _http_port_problem(settings.host, settings.port)
    if problem:
        log.error("%s", problem)
        return 1
    guards = None
    if not settings.guard_urls:
        guards = ReferenceGuardsProcess.start()
        settings = settings.with_guard_urls(guards.urls, embedded=True)
        log.info("no guard URL is set: started the built-in reference guards on loopback (embedded default): %s",
                 ", ".join(f"{name}={url}" for name, url in guards.urls.items()))
    stop_signal: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_signal.append(signum)

    reloads: list[int] = []
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda signum, frame: reloads.append(signum))
    asys = None
    session_id = 0
    try:
        try:
            asys = start_system(settings.admin_port, settings.log_level, settings.log_format,
                                settings.node_address, settings.heartbeat_s)
        except GatewayError as exc:
            log.error("%s", exc)
            return 1
        root = root_address(asys)
        request_id = new_request_id()
        start_env = relevant(os.environ if environ is None else environ)
        reply = asys.ask(root, Start(request_id, settings, start_env), START_TIMEOUT_S)
        if isinstance(reply, StartFailed):
            log.error("could not start: %s", reply.reason)
            return 1
        if not isinstance(reply, Started):
            log.error("could not start: the root actor did not answer in %g s", START_TIMEOUT_S)
            return 1
        session_id = reply.session_id
        log.info("Aeyon Orchestrator listening on http://%s:%d (actor admin port %d, pid %d)",
                 reply.http_host, reply.http_port, settings.admin_port, os.getpid())
        asys.tell(root, WatchShutdown(request_id))
        give_up_at: float | None = None
        while True:
            message = asys.listen(0.25)
            if isinstance(message, ShutdownRequested):
                log.info("stopping: %s", message.reason)
                return 1 if message.request_id == "escalation" else 0
            if isinstance(message, Reconfigured):
                log.info("SIGHUP: reloaded %s (%s)", os.environ.get(ENV_FILE), ", ".join(message.changed) or
                         "nothing changed")
            elif isinstance(message, Refused):
                log.error("SIGHUP: the new settings were refused, the running ones kept: %s", message.message)
            if reloads:
                reloads.clear()
                _reload(asys, root)
            if len(stop_signal) >= 2:
                log.info("stopping now: a second signal (%s)", signal.Signals(stop_signal[-1]).name)
                return 0
            if stop_signal and give_up_at is None:
                # SIGTERM (a rolling update) or Ctrl-C: drain first; the root says when it is done.
                log.info("signal %s: draining", signal.Signals(stop_signal[0]).name)
                asys.tell(root, Drain(request_id, settings.drain_grace_s, settings.drain_timeout_s))
                give_up_at = time.monotonic() + settings.drain_grace_s + settings.drain_timeout_s + DRAIN_SLACK_S
            if give_up_at is not None and time.monotonic() > give_up_at:
                log.warning("stopping: the drain did not finish in time")
                return 0
    finally:
        if asys is not None:
            asys.shutdown()
        if session_id:
            killed = reap_session(session_id)
            if killed:
                log.warning("killed %d actor processes that did not stop in time (workers blocked in calls)",
                            len(killed))
        if guards is not None:
            guards.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("stopped")


# How long a member waits for the leader to acknowledge it before it says so (it keeps trying afterwards).
JOIN_TIMEOUT_S = 10.0


def admin_session(parent: int) -> int:
    """The session id of the actor system this process started: its admin is a child of ours that called
    setsid, so its pid is the session id (0 when none is found)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and int(fields[3]) == int(entry):
                return int(entry)
    return 0


def _joined(asys: ActorSystem, leader: tuple[str, int]) -> bool:
    """True when this member's admin counts the leader among the convention's attendees (the leader answered
    its registration)."""
    from thespian.system.messages.status import Thespian_StatusReq

    admin = asys._systemBase.adminAddr
    status = asys.ask(admin, Thespian_StatusReq(), 2.0)
    attendees = getattr(status, "conventionAttendees", None) or []
    return any(getattr(getattr(member, "addressDetails", None), "sockname", None) == leader
               for member, _valid in attendees)


def serve_member(settings: Settings) -> int:
    """``aeyon serve --join HOST:PORT``: run a member that lends its actor system to the leader's orchestrator
    (the leader places guard supervisors on it, README.rst "Multi-node") until SIGTERM or SIGINT."""
    assert settings.join is not None
    leader = settings.join
    name = settings.member_name or f"member-{settings.admin_port}"
    stop_signal: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_signal.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    asys = None
    session_id = 0
    try:
        try:
            asys = start_member(settings.admin_port, leader, name, settings.member_guards, settings.log_level,
                                settings.log_format, settings.node_address, settings.heartbeat_s)
        except GatewayError as exc:
            log.error("%s", exc)
            return 1
        session_id = admin_session(os.getpid())
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        joined = False
        while not stop_signal:
            if not joined and _joined(asys, leader):
                joined = True
                log.info("member %s joined the leader at %s:%d (actor admin port %d, may host: %s, pid %d)",
                         name, *leader, settings.admin_port, settings.member_guards, os.getpid())
            elif not joined and deadline is not None and time.monotonic() > deadline:
                log.warning("member %s: no answer from a leader at %s:%d yet; still trying", name, *leader)
                deadline = None  # type: ignore[assignment]
            time.sleep(0.1 if not joined else 0.25)
        log.info("member %s: signal %s: leaving the convention", name, signal.Signals(stop_signal[0]).name)
        return 0
    finally:
        if asys is not None:
            asys.shutdown()  # deregisters first: the leader places this member's guards again at once
        if session_id:
            killed = reap_session(session_id)
            if killed:
                log.warning("killed %d actor processes that did not stop in time", len(killed))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("member %s stopped", name)
