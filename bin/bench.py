"""Benchmark of the HTTP shim in front of a fast local guard, next to the same load sent straight to the guard.

Run it as ``bin/bench`` (which prepares the project's virtual environment first). It

1. finds ``wrk`` (the load generator) and ``nginx`` (the guard); when one is missing and this runs as root with
   apt-get, it installs the Debian package (without letting the package start a system service), else it exits 2
   saying how to install it;
2. starts nginx in the foreground on a free loopback port with a throw-away configuration: it answers every request
   with a fixed tokenguard verdict, so the guard costs next to nothing and the figures are the orchestrator's;
3. starts ``aeyon serve`` with a clean environment routing ``tokenguard`` to that nginx, on free ports, and waits
   for ``GET /ready``;
4. runs wrk with keep-alive connections POSTing JSON for a fixed time, after a short unreported warm-up: first
   straight to nginx (``POST /scan``), then through the shim (``POST /v1/orchestrate``), sampling the CPU time of
   the server's processes before and after each run;
5. prints requests/s, p50 and p99 latency, errors (non-2xx answers plus socket errors) and CPU milliseconds per
   request for both runs as a table on stdout (and as JSON with ``--json PATH``);
6. always stops the orchestrator (``aeyon stop``, then kills any process still carrying this run's tag) and nginx,
   and removes its temporary directory, also on Ctrl-C, SIGTERM or an error.

The rate limit (SECURITY_MAX_REQUESTS_PER_MINUTE) is set to its maximum: every wrk connection comes from the same
loopback address, and the point is to measure the request path, not to watch the limiter refuse.

Exit status: 0 when every run completed requests without errors; 1 when a run had errors or something failed (the
table is printed first when there is one); 2 when a tool is missing and cannot be installed; 130 when interrupted.
This prints figures; it asserts no thresholds.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import functools
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_DURATION_S = 10
DEFAULT_CONNECTIONS = 64
DEFAULT_THREADS = 1
DEFAULT_WARMUP_S = 2
SMOKE_DURATION_S = 2
SMOKE_CONNECTIONS = 8

START_TIMEOUT_S = 30.0  # aeyon serve: until GET /ready answers 200
STOP_TIMEOUT_S = 30.0  # aeyon stop, then the serve process's exit
LEFTOVER_GRACE_S = 5.0  # Thespian's children exit a moment after the admin
NGINX_START_TIMEOUT_S = 10.0
NGINX_STOP_TIMEOUT_S = 10.0
WRK_REQUEST_TIMEOUT = "10s"  # wrk counts a request slower than this as a socket timeout error
WRK_GRACE_S = 60  # how long wrk may overrun its duration before it is killed
LOG_TAIL_LINES = 40

TAG_VAR = "AEYON_BENCH_TAG"
MAX_RATE_LIMIT = "10000000"  # SECURITY_MAX_REQUESTS_PER_MINUTE's largest accepted value
ORCHESTRATOR_PREFIXES = ("AEYON_", "SECURITY_", "GUARDIAN_")
PR_SET_PDEATHSIG = 1

GUARD_HEALTH = '{"status":"healthy"}'
GUARD_VERDICT = '{"service":"tokenguard","safe":true,"findings":[],"count":0}'
DIRECT_PATH = "/scan"
DIRECT_BODY = '{"text": "hello world"}'
SHIM_PATH = "/v1/orchestrate"
SHIM_BODY = '{"service": "tokenguard", "payload": {"text": "hello world"}}'

NGINX_CONF = string.Template("""\
worker_processes 1;
daemon off;
master_process on;
pid $tmp/nginx.pid;
error_log $tmp/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $tmp/client_body;
    proxy_temp_path $tmp/proxy;
    fastcgi_temp_path $tmp/fastcgi;
    uwsgi_temp_path $tmp/uwsgi;
    scgi_temp_path $tmp/scgi;
    server {
        listen 127.0.0.1:$port;
        location = /health { default_type application/json; return 200 '$health'; }
        location / { default_type application/json; return 200 '$verdict'; }
    }
}
""")

WRK_SCRIPT = string.Template("""\
-- Written by bin/bench: POST the same JSON body on every request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$body]==]
""")

TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
DURATION_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.MULTILINE)
WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
WRK_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_PERCENTILE = r"^\s*{}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$"


class BenchError(Exception):
    """A failure that ends the benchmark: its message goes to stderr, ``status`` becomes the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What one benchmark invocation does."""

    duration_s: int
    connections: int
    threads: int
    warmup_s: int
    smoke: bool
    json_path: Path | None
    compare_entry: bool = False

    def command(self) -> str:
        """The command line that reproduces these settings."""
        if self.smoke:
            return (f"bin/bench --smoke (duration {self.duration_s} s, {self.connections} connections, "
                    f"{self.threads} thread{'s' if self.threads != 1 else ''}, "
                    f"{'no warm-up' if not self.warmup_s else f'warm-up {self.warmup_s} s'})")
        line = f"bin/bench --duration {self.duration_s} --connections {self.connections} --threads {self.threads}"
        if self.warmup_s != DEFAULT_WARMUP_S:
            line += f" --warmup {self.warmup_s}"
        if self.compare_entry:
            line += " --compare-entry"
        return line


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Read the command line; ``--smoke`` changes the defaults, explicit options still win."""
    parser = argparse.ArgumentParser(
        prog="bin/bench",
        description="Drive the HTTP shim with concurrent keep-alive clients (wrk) against a fast local guard "
                    "(nginx) for a fixed time, and print req/s, p50, p99, errors and CPU per request, next to the "
                    "same load sent straight to the guard.")
    parser.add_argument("--duration", type=_positive_int, metavar="S",
                        help=f"seconds per measured run (default {DEFAULT_DURATION_S}; --smoke: {SMOKE_DURATION_S})")
    parser.add_argument("--connections", type=_positive_int, metavar="N",
                        help=f"keep-alive connections (default {DEFAULT_CONNECTIONS}; --smoke: {SMOKE_CONNECTIONS})")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help=f"wrk threads (default {DEFAULT_THREADS}, to leave the server its cores)")
    parser.add_argument("--warmup", type=_non_negative_int, metavar="S",
                        help=f"unreported warm-up seconds before each run (default {DEFAULT_WARMUP_S}; --smoke: 0)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"quick run for the test suite: {SMOKE_DURATION_S} s, {SMOKE_CONNECTIONS} connections, "
                             "no warm-up")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--compare-entry", action="store_true",
                        help="also measure the alternative HTTP entry (bin/threaded_entry.py: a threaded stdlib "
                             "server calling the orchestrator through the Python gateway)")
    args = parser.parse_args(argv)
    settings = Settings(
        duration_s=_first(args.duration, SMOKE_DURATION_S if args.smoke else DEFAULT_DURATION_S),
        connections=_first(args.connections, SMOKE_CONNECTIONS if args.smoke else DEFAULT_CONNECTIONS),
        threads=_first(args.threads, DEFAULT_THREADS),
        warmup_s=_first(args.warmup, 0 if args.smoke else DEFAULT_WARMUP_S),
        smoke=args.smoke,
        json_path=args.json,
        compare_entry=args.compare_entry,
    )
    if settings.connections < settings.threads:
        parser.error("--connections must be at least --threads (each wrk thread needs a connection)")
    return settings


def _first(value: int | None, default: int) -> int:
    return default if value is None else value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


# ------------------------------------------------------------------------------------------------------------ tools


def find_tool(name: str) -> str | None:
    """The path of the executable ``name`` on PATH or in the sbin directories (nginx lives in /usr/sbin)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def ensure_tool(name: str, package: str) -> str:
    """The path of ``name``, installing Debian's ``package`` first when it is missing and we may (root, apt-get)."""
    found = find_tool(name)
    if found:
        return found
    how = f"install it, e.g. on Debian/Ubuntu: sudo apt-get install -y {package}"
    if os.geteuid() != 0 or not find_tool("apt-get"):
        raise BenchError(f"bench: {name} is needed and missing: {how}", 2)
    print(f"bench: {name} is missing: installing the Debian package {package} ...", file=sys.stderr)
    problem = apt_install(package)
    found = find_tool(name)
    if problem or not found:
        raise BenchError(f"bench: could not install {package} ({problem or f'no {name} after install'}): {how}", 2)
    return found


def apt_install(package: str) -> str | None:
    """``apt-get install -y package`` quietly (``apt-get update`` and once more if that fails); None or why not."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    with services_not_started():
        done = _quiet(install, env)
        if done.returncode != 0:
            _quiet(["apt-get", "update", "-q"], env)
            done = _quiet(install, env)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"apt-get exited with {done.returncode}"


def _quiet(command: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, check=False)


@contextlib.contextmanager
def services_not_started() -> Iterator[None]:
    """Keep a package's maintainer scripts from starting its system service (Debian's policy-rc.d, exit 101):
    installing nginx must not leave a system nginx listening on port 80. Does nothing if a policy already exists."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# Written by bin/bench while it installs a package; removed right after.\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


def tool_version(command: list[str], pattern: str) -> str:
    """The version a tool prints about itself (``wrk -v``, ``nginx -v``), or "?"."""
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "?"


# -------------------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def die_with_parent(libc: ctypes.CDLL) -> None:
    """Run in a child between fork and exec: SIGTERM it when this benchmark dies, so nothing outlives it."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(command: list[str], *, env: Mapping[str, str] | None, log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server child in its own session (a terminal's Ctrl-C reaches only us: we stop it, in order) that
    gets SIGTERM if we die; its output goes to ``log_path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=functools.partial(die_with_parent, libc))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP for a moment: a second Ctrl-C must not cut a clean-up short (each clean-up
    step has its own time limit)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until it is true (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _live(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def tagged_pids(tag: str) -> list[int]:
    """Live processes whose environment carries ``TAG_VAR=tag`` (every process ``aeyon serve`` starts)."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for pid in _all_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid() and _live(pid)]


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (nginx's workers: nginx rewrites their environment, so no tag)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return [pid for pid in tree if _live(pid)]


def cpu_seconds(pids: Iterable[int]) -> float:
    """The user plus system CPU time the processes ``pids`` have used so far."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(empty)"


def http_call(port: int, method: str, path: str, body: str | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    """One HTTP request to 127.0.0.1:``port``: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body.encode() if body is not None else None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _answers(process: subprocess.Popen[bytes], port: int, path: str, what: str, log_path: Path) -> bool:
    """Whether ``GET path`` answers 200; raises BenchError with the log if the process has exited."""
    if process.poll() is not None:
        raise BenchError(f"bench: {what} exited with {process.returncode}; its log:\n{log_tail(log_path)}")
    try:
        return http_call(port, "GET", path, timeout=1.0)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


# ------------------------------------------------------------------------------------------------------- the guard


@dataclass
class Guard:
    """The nginx standing in for a guard."""

    process: subprocess.Popen[bytes]
    port: int
    error_log: Path

    def pids(self) -> list[int]:
        """nginx's master and worker processes."""
        return process_tree(self.process.pid)


@contextlib.contextmanager
def guard_running(nginx: str, workdir: Path) -> Iterator[Guard]:
    """Start nginx as the guard on a free loopback port, wait until it answers, and always stop it."""
    port = free_port()
    tmp = workdir / "nginx"
    tmp.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.substitute(tmp=tmp, port=port, health=GUARD_HEALTH, verdict=GUARD_VERDICT))
    error_log = tmp / "error.log"
    output = tmp / "output.log"
    process = spawn([nginx, "-p", f"{tmp}/", "-c", str(conf), "-e", str(error_log)], env=None, log_path=output)
    try:
        guard = Guard(process, port, error_log)
        if not wait_for(lambda: _answers(process, port, "/health", "nginx", output), NGINX_START_TIMEOUT_S):
            raise BenchError(f"bench: nginx did not answer on 127.0.0.1:{port} within {NGINX_START_TIMEOUT_S:g} s; "
                             f"its error log:\n{log_tail(error_log)}")
        yield guard
    finally:
        with signals_deferred():
            stop_nginx(process)


def stop_nginx(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (nginx's fast shutdown), then SIGKILL for the master and its workers after a while."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(NGINX_STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            pass
        for pid in reversed(process_tree(process.pid)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    process.wait()


# ------------------------------------------------------------------------------------------------ the orchestrator


@dataclass
class Orchestrator:
    """A running ``aeyon serve``."""

    process: subprocess.Popen[bytes]
    http_port: int
    admin_port: int
    tag: str
    env: dict[str, str]
    log_path: Path

    def pids(self) -> list[int]:
        """Every process of this orchestrator (serve, Thespian's admin and logger, the actors)."""
        return tagged_pids(self.tag)

    def aeyon(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``aeyon ARGS`` with this orchestrator's environment."""
        return subprocess.run([sys.executable, "-m", "system.cli", *args], env=self.env, cwd=ROOT,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)


def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any orchestrator setting, plus ``overrides``."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(ORCHESTRATOR_PREFIXES) and not name.endswith("GUARD_URL")
           and name != "DISABLE_HEALTH_CHECKS"}
    env.update(overrides)
    return env


@contextlib.contextmanager
def orchestrator_running(guard_port: int, workdir: Path, problems: list[str]) -> Iterator[Orchestrator]:
    """Start ``aeyon serve`` routing tokenguard to the guard, wait for ``GET /ready``, and always stop it; what
    goes wrong while stopping is appended to ``problems``."""
    http_port, admin_port, tag = free_port(), free_port(), uuid.uuid4().hex
    env = clean_env({
        "TOKENGUARD_URL": f"http://127.0.0.1:{guard_port}",
        "AEYON_PORT": str(http_port),
        "AEYON_ADMIN_PORT": str(admin_port),
        "AEYON_LOG_LEVEL": "WARNING",
        "SECURITY_MAX_REQUESTS_PER_MINUTE": MAX_RATE_LIMIT,
        TAG_VAR: tag,
    })
    log_path = workdir / "serve.log"
    process = spawn([sys.executable, "-m", "system.cli", "serve"], env=env, log_path=log_path)
    orch = Orchestrator(process, http_port, admin_port, tag, env, log_path)
    try:
        if not wait_for(lambda: _answers(process, http_port, "/ready", "aeyon serve", log_path), START_TIMEOUT_S):
            raise BenchError(f"bench: aeyon serve was not ready within {START_TIMEOUT_S:g} s; its log:\n"
                             f"{log_tail(log_path)}")
        yield orch
    finally:
        with signals_deferred():
            problems.extend(stop_orchestrator(orch))


@contextlib.contextmanager
def threaded_entry_running(orch: Orchestrator, workdir: Path) -> Iterator[int]:
    """The alternative HTTP entry (bin/threaded_entry.py) in front of the same orchestrator; yields its port."""
    port = free_port()
    log_path = workdir / "threaded-entry.log"
    process = spawn([sys.executable, str(ROOT / "bin" / "threaded_entry.py"), "--admin-port", str(orch.admin_port),
                     "--port", str(port)], env=orch.env, log_path=log_path)
    try:
        if not wait_for(lambda: _listening(port) or process.poll() is not None, START_TIMEOUT_S) \
                or process.poll() is not None:
            raise BenchError(f"bench: the threaded entry did not start; its log:\n{log_tail(log_path)}")
        yield port
    finally:
        with signals_deferred():
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def stop_orchestrator(orch: Orchestrator) -> list[str]:
    """``aeyon stop``, wait for serve to exit, then kill whatever still carries the tag; the problems seen."""
    problems = []
    if orch.process.poll() is None:
        try:
            done = orch.aeyon("stop", "--admin-port", str(orch.admin_port), timeout=STOP_TIMEOUT_S + 5)
            if done.returncode != 0:
                problems.append(f"aeyon stop exited with {done.returncode}: {done.stderr.strip()}")
        except subprocess.TimeoutExpired:
            problems.append(f"aeyon stop did not return within {STOP_TIMEOUT_S + 5:g} s")
        if problems and orch.process.poll() is None:
            orch.process.terminate()
    try:
        code = orch.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        problems.append(f"aeyon serve did not exit within {STOP_TIMEOUT_S:g} s after the stop: killed it")
        orch.process.kill()
        code = orch.process.wait()
    if code != 0 and not problems:
        problems.append(f"aeyon serve exited with {code}")
    if not wait_for(lambda: not orch.pids(), LEFTOVER_GRACE_S):
        leftovers = orch.pids()
        names = []
        for pid in leftovers:
            try:
                names.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
            except OSError:
                names.append(str(pid))
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            problems.append(f"processes left behind after the stop (killed): {', '.join(names)}")
    if problems:
        problems.append(f"the tail of the serve log:\n{log_tail(orch.log_path)}")
    return problems


# ------------------------------------------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    """The figures of one measured run."""

    name: str
    label: str
    url: str
    body: str
    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    non_2xx: int
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float | None = None
    cpu_of: str = ""

    @property
    def errors(self) -> int:
        """Non-2xx/3xx answers plus socket errors (connect, read, write, timeout)."""
        return self.non_2xx + sum(self.socket_errors.values())

    @property
    def cpu_ms_per_request(self) -> float | None:
        """Server CPU milliseconds per completed request."""
        if self.cpu_s is None or not self.requests:
            return None
        return self.cpu_s * 1000.0 / self.requests

    def as_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        return {**asdict(self), "errors": self.errors, "cpu_ms_per_request": _rounded(self.cpu_ms_per_request)}


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures in the text ``wrk --latency`` prints (latencies converted to milliseconds)."""
    requests = WRK_REQUESTS.search(output)
    rate = WRK_RATE.search(output)
    if not requests or not rate:
        raise BenchError(f"bench: cannot read wrk's output:\n{output}")
    non_2xx = WRK_NON_2XX.search(output)
    sockets = WRK_SOCKET.search(output)
    return {
        "requests": int(requests.group(1)),
        "duration_s": round(float(requests.group(2)) * DURATION_UNITS_S[requests.group(3)], 3),
        "requests_per_s": float(rate.group(1)),
        "p50_ms": _percentile_ms(output, "50"),
        "p99_ms": _percentile_ms(output, "99"),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  (int(n) for n in sockets.groups()) if sockets else (0, 0, 0, 0), strict=True)),
    }


def _percentile_ms(output: str, percent: str) -> float | None:
    match = re.search(WRK_PERCENTILE.format(percent), output, re.MULTILINE)
    if not match:
        return None
    return round(float(match.group(1)) * TIME_UNITS_MS[match.group(2)], 4)


def run_wrk(wrk: str, settings: Settings, duration_s: int, url: str, script: Path) -> str:
    """Run wrk against ``url`` for ``duration_s`` seconds; its output."""
    command = [wrk, "--latency", "-t", str(settings.threads), "-c", str(settings.connections),
               "-d", f"{duration_s}s", "--timeout", WRK_REQUEST_TIMEOUT, "-s", str(script), url]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=duration_s + WRK_GRACE_S, start_new_session=True, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"bench: wrk did not finish within {duration_s + WRK_GRACE_S} s: "
                         f"{shlex.join(command)}") from None
    if done.returncode != 0:
        raise BenchError(f"bench: wrk exited with {done.returncode}: {shlex.join(command)}\n"
                         f"{(done.stdout + done.stderr).strip()}")
    return done.stdout


def check_once(port: int, path: str, body: str, what: str, expect: Callable[[Any], bool]) -> None:
    """Send one request before the load and make sure the answer is the expected success."""
    try:
        status, raw = http_call(port, "POST", path, body, timeout=10.0)
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"bench: a first request {what} failed: {exc}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if status != 200 or not expect(answer):
        raise BenchError(f"bench: a first request {what} answered {status}: {raw[:500]!r}")


def measure(wrk: str, settings: Settings, name: str, label: str, port: int, path: str, body: str,
            workdir: Path, server_pids: Callable[[], list[int]], cpu_of: str) -> RunResult:
    """Warm up (unreported), then one measured wrk run, sampling the server's CPU time around it."""
    script = workdir / f"{name}.lua"
    script.write_text(WRK_SCRIPT.substitute(body=body))
    url = f"http://127.0.0.1:{port}{path}"
    if settings.warmup_s:
        print(f"bench: {label}: warm-up {settings.warmup_s} s ...", file=sys.stderr)
        run_wrk(wrk, settings, settings.warmup_s, url, script)
    print(f"bench: {label}: {settings.duration_s} s, {settings.connections} connections ...", file=sys.stderr)
    before = cpu_seconds(server_pids())
    output = run_wrk(wrk, settings, settings.duration_s, url, script)
    after = cpu_seconds(server_pids())
    return RunResult(name=name, label=label, url=url, body=body, cpu_s=round(after - before, 3), cpu_of=cpu_of,
                     **parse_wrk(output))


# ----------------------------------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = " ".join(line.split(":", 1)[1].split())
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    try:
        thespian = importlib.metadata.version("thespian")
    except importlib.metadata.PackageNotFoundError:
        thespian = "not installed"
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "memory_gib": mem_gib,
            "kernel": platform.release(), "python": platform.python_version(), "thespian": thespian}


def report(started: datetime.datetime, info: Mapping[str, Any], settings: Settings,
           results: Sequence[RunResult]) -> str:
    """The plain-text table."""
    lines = [
        f"Aeyon bench — {started:%Y-%m-%d %H:%M} UTC",
        f"machine: {info['cpu']} x {info['cores']} cores, {info['memory_gib']} GiB, Linux {info['kernel']}, "
        f"Python {info['python']}, thespian {info['thespian']}",
        f"tools: wrk {info['wrk']}, nginx {info['nginx']}",
        f"command: {settings.command()}",
        f"{'run':<25}{'req/s':<9}{'p50 ms':<9}{'p99 ms':<9}{'errors':<9}cpu ms/req",
    ]
    for result in results:
        lines.append(f"{result.label:<25}{result.requests_per_s:<9.0f}{_ms(result.p50_ms):<9}"
                     f"{_ms(result.p99_ms):<9}{result.errors:<9}{_ms(result.cpu_ms_per_request)}")
    lines.append("")
    lines.append("errors: non-2xx answers plus socket errors; cpu ms/req: CPU time per request of nginx (direct) "
                 "and of the orchestrator's processes, nginx not counted (through the shim)")
    for result in results:
        if result.errors:
            sockets = ", ".join(f"{kind} {count}" for kind, count in result.socket_errors.items())
            lines.append(f"{result.label}: {result.requests} requests, {result.non_2xx} non-2xx answers, "
                         f"socket errors: {sockets}")
        elif not result.requests:
            lines.append(f"{result.label}: no request completed")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


# -------------------------------------------------------------------------------------------------------- the bench


def bench(settings: Settings) -> int:
    """Set everything up, run both measurements, print the table, tear everything down; the exit status."""
    started = datetime.datetime.now(datetime.timezone.utc)
    wrk = ensure_tool("wrk", "wrk")
    nginx = ensure_tool("nginx", "nginx")
    info = {**machine(), "wrk": tool_version([wrk, "-v"], r"wrk (?:[a-z]+/)?(\S+)"),
            "nginx": tool_version([nginx, "-v"], r"nginx/([\w.\-]+)")}
    problems: list[str] = []
    results: list[RunResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="aeyon-bench-") as tmp:
            workdir = Path(tmp)
            with guard_running(nginx, workdir) as guard, orchestrator_running(guard.port, workdir, problems) as orch:
                check_once(guard.port, DIRECT_PATH, DIRECT_BODY, "straight to nginx",
                           lambda answer: isinstance(answer, dict) and answer.get("safe") is True)
                check_once(orch.http_port, SHIM_PATH, SHIM_BODY, "through the shim",
                           lambda answer: isinstance(answer, dict) and answer.get("status") == "success")
                results.append(measure(wrk, settings, "direct", "direct to guard (nginx)", guard.port, DIRECT_PATH,
                                       DIRECT_BODY, workdir, guard.pids, "nginx"))
                results.append(measure(wrk, settings, "shim", "through the shim", orch.http_port, SHIM_PATH, SHIM_BODY,
                                       workdir, orch.pids, "aeyon serve and its actor processes"))
                if settings.compare_entry:
                    with threaded_entry_running(orch, workdir) as port:
                        check_once(port, SHIM_PATH, SHIM_BODY, "through the threaded entry",
                                   lambda answer: isinstance(answer, dict) and answer.get("status") == "success")
                        results.append(measure(wrk, settings, "threaded", "threaded entry+gateway", port,
                                               SHIM_PATH, SHIM_BODY, workdir, orch.pids,
                                               "the threaded entry and the orchestrator's processes"))
                print(report(started, info, settings, results), flush=True)
                if settings.json_path:
                    write_json(settings, started, info, results)
                if orch.process.poll() is not None:
                    problems.append(f"aeyon serve exited with {orch.process.returncode} during the benchmark")
                elif results[-1].errors or not results[-1].requests:
                    print(f"bench: the shim run had errors; the tail of the serve log:\n{log_tail(orch.log_path)}",
                          file=sys.stderr)
    finally:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
    failed = problems or any(result.errors or not result.requests for result in results)
    return 1 if failed else 0


def write_json(settings: Settings, started: datetime.datetime, info: Mapping[str, Any],
               results: Sequence[RunResult]) -> None:
    """Write the figures as JSON to ``settings.json_path``."""
    assert settings.json_path is not None
    document = {
        "timestamp": started.isoformat(timespec="seconds"),
        "machine": dict(info),
        "command": settings.command(),
        "settings": {"duration_s": settings.duration_s, "connections": settings.connections,
                     "threads": settings.threads, "warmup_s": settings.warmup_s, "smoke": settings.smoke,
                     "wrk_request_timeout": WRK_REQUEST_TIMEOUT},
        "runs": [result.as_json() for result in results],
    }
    settings.json_path.write_text(json.dumps(document, indent=2) + "\n")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``bin/bench [--smoke] [--duration S] [--connections N] [--threads N] [--json PATH]``."""
    settings = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        return bench(settings)
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("bench: interrupted; stopped everything it started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
