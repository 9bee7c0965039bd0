"""Benchmark of the HTTP shim in front of a fast local guard, next to the same load sent straight to the guard;
then the same load while another guard hangs (isolation), and the answers while a guard's breaker is open (fail-fast);
open-loop latency at fixed rates, the Python gateway, memory (idle, and its growth over a soak) and the time to
start, each figure next to the goal it serves (issue 6), all measured in one run.

Run it as ``bin/bench`` (which prepares the project's virtual environment first). It

1. finds ``wrk`` (the load generator) and ``nginx`` (the guard); when one is missing and this runs as root with
   apt-get, it installs the Debian package (without letting the package start a system service), else it exits 2
   saying how to install it;
2. starts nginx in the foreground with a throw-away configuration and two servers on free loopback ports: one
   answers every request with a fixed tokenguard verdict, so the guard costs next to nothing and the figures are
   the orchestrator's; the other (biasguard) answers ``GET /health`` 200 and everything else 500;
3. starts a hung guard in a thread of its own (stdlib ``selectors``): it answers ``GET /health`` 200 healthy and
   reads every other request without ever answering it;
4. memory and start-up: starts ``aeyon serve`` with all six guards routed to the fast nginx, times it from spawning
   to the first 200 from ``GET /ready``, lets it idle for IDLE_S seconds, sums the PSS (``/proc/PID/smaps_rollup``)
   of all its processes, and stops it;
5. starts ``aeyon serve`` with a clean environment routing ``tokenguard`` to the fast nginx, ``trustguard`` to the
   hung guard and ``biasguard`` to the failing nginx (``AEYON_BREAKER_OPEN=5``), on free ports, and waits for
   ``GET /ready`` (timed too);
6. runs wrk with keep-alive connections POSTing JSON for a fixed time, after a short unreported warm-up: first
   straight to nginx (``POST /scan``), then through the shim (``POST /v1/orchestrate``), sampling the CPU time of
   the server's processes before and after each run;
7. open loop (``bin/openloop.py``: requests sent on a fixed schedule over at most OPEN_CONNECTIONS keep-alive
   connections, each request's latency measured from its scheduled time): ``--rate-low`` (100) requests/s straight
   to nginx and through the shim, whose p50s give the latency the shim adds, and ``--rate-high`` (1,000) through
   the shim, each for ``--open-duration`` seconds after an unreported warm-up at its rate;
8. the Python gateway: a separate process (``bin/gateway_load.py``) joins the actor system and calls
   ``Gateway.orchestrate("tokenguard", ...)`` from GATEWAY_THREADS threads, one call after the other, for
   ``--duration`` seconds;
9. isolation: through the shim to tokenguard again (baseline), then the same while a second wrk (its own process,
   16 connections, ``"timeout": 2``) calls trustguard; that load starts before the measured run (at least 1 s
   before, and not before the hung guard has received a call) and is stopped (SIGINT) after it. It reports the
   tokenguard figures, their ratio to the baseline, and what the hung guard's callers got (by status and error
   code, counted in wrk's Lua ``response`` callback);
10. fail-fast: trips biasguard's breaker with sequential requests until one is answered ``circuit_open`` (at most
    50), then runs wrk (8 connections, no warm-up) through the shim to biasguard and reports p50/p99 and the answers
    by status and error code: 503 ``circuit_open`` is the expected answer, 502 from a failing half-open probe too;
    then (the breaker tripped again if it closed meanwhile) the same with ``--rate-high`` requests/s, open loop;
11. the soak: open loop through the shim at half the req/s of the wrk run through the shim, for SOAK_WARMUP_S
    seconds (a warm-up), then for ``--soak`` seconds; the PSS of the orchestrator's processes after the warm-up
    and at the end gives the memory growth;
12. prints requests/s, p50 and p99 latency, errors and CPU milliseconds per request of every wrk run as a table on
    stdout, with notes for the isolation and fail-fast rows, then the open-loop runs, the gateway, memory and
    start-up figures, and the goals table: each figure of issue 6 with its goal and "met" or "MISSED" (and
    everything as JSON with ``--json PATH``);
13. always stops the second wrk, the orchestrator (``aeyon stop``, then kills any process still carrying this run's
   tag), the hung guard's thread and nginx, and removes its temporary directory, also on Ctrl-C, SIGTERM or an
   error.

Errors are non-2xx answers plus socket errors, except where an answer is the expected one: in the fail-fast runs 502
and 503 are not errors, and for the hung guard's callers 503 and 504 are not (their figures are not a table row,
but an unexpected status or a socket error there counts like an error in a row). Every run through the shim counts
its answers by status and error code, and a run with errors lists them. In an open-loop run, a request still
unanswered OPEN_DRAIN_S seconds after the last scheduled send is an error too, as is a gateway call that did not
succeed.

The rate limit (SECURITY_MAX_REQUESTS_PER_MINUTE) is set to its maximum: every wrk connection comes from the same
loopback address, and the point is to measure the request path, not to watch the limiter refuse.

Exit status: 0 when every run completed requests without errors; 1 when a run had errors or something failed (the
table is printed first when there is one); 2 when a tool is missing and cannot be installed; 130 when interrupted.
This prints figures; it asserts no thresholds: a goal it reports MISSED does not change the exit status.
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
import selectors
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import openloop  # noqa: E402 - bin/openloop.py, next to this file (on the path when run as a script)

from system.routing import SERVICE_TYPES  # noqa: E402 - after the path is set

DEFAULT_DURATION_S = 10
DEFAULT_CONNECTIONS = 64
DEFAULT_THREADS = 1
DEFAULT_WARMUP_S = 2
SMOKE_DURATION_S = 2
SMOKE_CONNECTIONS = 8
DEFAULT_OPEN_DURATION_S = 10
SMOKE_OPEN_DURATION_S = 2
DEFAULT_RATE_LOW = 100  # requests/s offered for the added latency (issue 6)
DEFAULT_RATE_HIGH = 1000  # requests/s offered for the p99 (issue 6)
DEFAULT_SOAK_S = 600  # the memory growth soak (issue 6: a 10-minute run)
SMOKE_SOAK_S = 5

START_TIMEOUT_S = 30.0  # aeyon serve: until GET /ready answers 200
STOP_TIMEOUT_S = 30.0  # aeyon stop, then the serve process's exit
LEFTOVER_GRACE_S = 5.0  # Thespian's children exit a moment after the admin
NGINX_START_TIMEOUT_S = 10.0
NGINX_STOP_TIMEOUT_S = 10.0
WRK_REQUEST_TIMEOUT = "10s"  # wrk counts a request slower than this as a socket timeout error
WRK_GRACE_S = 60  # how long wrk may overrun its duration before it is killed
LOG_TAIL_LINES = 40

# Isolation: a second wrk calls the hung guard (trustguard) while tokenguard is measured.
HUNG_CONNECTIONS = 16
HUNG_TIMEOUT_S = 2  # the hung guard's callers' request timeout: the orchestrator answers 504 at its end
HUNG_LEAD_S = 1.0  # that load starts at least this long before the measured run ...
HUNG_REACH_TIMEOUT_S = 10.0  # ... and not before the hung guard has received a call (within this long)
HUNG_EXPECTED = (503, 504)  # what its callers may get: upstream_timeout, then circuit_open
HUNG_OPEN_RATE = 100  # the hung guard's callers in the fixed-rate isolation run, requests/s
LOAD_STOP_TIMEOUT_S = 10.0  # wrk's exit after SIGINT
HUNG_GUARD_STOP_TIMEOUT_S = 5.0  # the hung guard's thread
HUNG_GUARD_MAX_HEAD = 64 * 1024  # a request head longer than this closes the connection
# Fail-fast: biasguard answers 500; its breaker is tripped, then measured while open.
BREAKER_OPEN_S = "5"  # AEYON_BREAKER_OPEN: the first open period
FAIL_CONNECTIONS = 8
TRIP_MAX_TRIES = 50
FAIL_EXPECTED = (502, 503)  # circuit_open, and upstream_error from a half-open probe that fails
# Open loop (bin/openloop.py), the gateway, memory and start-up.
OPEN_CONNECTIONS = 64  # the open-loop pool's size (connections open as needed)
OPEN_DRAIN_S = 5.0  # how long an open-loop run waits for answers after its last scheduled send
GATEWAY_THREADS = 16
GATEWAY_GRACE_S = 60.0  # how long the gateway's process may overrun its duration before it is killed
IDLE_S = 3.0  # the six-guard orchestrator idles this long after it is ready before its memory is read
SOAK_GROWERS = 5  # the soak names this many of the actors whose memory grew most
SOAK_WARMUP_S = 10  # the soak's unreported start, after which its first memory figure is read ...
SMOKE_SOAK_WARMUP_S = 1  # ... with --smoke
READY_POLL_S = 0.02  # how often GET /ready is tried while an orchestrator starts

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
HUNG_BODY = f'{{"service": "trustguard", "payload": {{"text": "x"}}, "timeout": {HUNG_TIMEOUT_S}}}'
FAIL_BODY = '{"service": "biasguard", "payload": {"text": "x"}}'
FAIL_ANSWER = '{"error":"bin/bench: this guard fails on purpose"}'

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
    server {
        listen 127.0.0.1:$fail_port;
        location = /health { default_type application/json; return 200 '$health'; }
        location / { default_type application/json; return 500 '$failure'; }
    }
}
""")

WRK_SCRIPT = string.Template("""\
-- Written by bin/bench: POST the same JSON body on every request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$body]==]
""")

COUNTING_WRK_SCRIPT = string.Template("""\
-- Written by bin/bench: POST the same JSON body on every request; count the answers by status and, for an
-- error, the orchestrator's error code; print the counts when done ("bench-status STATUS [CODE] COUNT").
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[$body]==]

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
end

function response(status, headers, body)
  local key = tostring(status)
  if status >= 300 and body then
    local code = string.match(body, '"code"%s*:%s*"([%w_]+)"')
    if code then
      key = key .. " " .. code
    end
  end
  counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("counts") or {}) do
      total[key] = (total[key] or 0) + count
    end
  end
  for key, count in pairs(total) do
    io.write(string.format("bench-status %s %d\\n", key, count))
  end
end
""")

TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
DURATION_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", re.MULTILINE)
WRK_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
WRK_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_PERCENTILE = r"^\s*{}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$"
WRK_STATUS = re.compile(r"^bench-status (\d{3}(?: \w+)?) (\d+)$", re.MULTILINE)
PSS_LINE = re.compile(r"^Pss:\s+(\d+) kB$", re.MULTILINE)
HTTP_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*(\d+)[ \t]*$", re.IGNORECASE | re.MULTILINE)


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
    faults: bool = True  # the isolation and fail-fast measurements
    open_duration_s: int = DEFAULT_OPEN_DURATION_S
    rate_low: int = DEFAULT_RATE_LOW
    rate_high: int = DEFAULT_RATE_HIGH
    soak_s: int = DEFAULT_SOAK_S  # 0: no soak
    # The multi-node and scale-out mode (bin/scale.py): comma-separated lists, or None.
    nodes: str | None = None
    cores: str | None = None
    shims: str | None = None

    @property
    def soak_warmup_s(self) -> int:
        """The soak's unreported start."""
        return SMOKE_SOAK_WARMUP_S if self.smoke else SOAK_WARMUP_S

    def command(self) -> str:
        """The command line that reproduces these settings."""
        if self.smoke:
            return (f"bin/bench --smoke{'' if self.faults else ' --no-faults'} (duration {self.duration_s} s, "
                    f"{self.connections} connections, {self.threads} thread{'s' if self.threads != 1 else ''}, "
                    f"{'no warm-up' if not self.warmup_s else f'warm-up {self.warmup_s} s'}; open loop "
                    f"{self.open_duration_s} s at {self.rate_low} and {self.rate_high} req/s; soak {self.soak_s} s)")
        line = (f"bin/bench --duration {self.duration_s} --connections {self.connections} --threads {self.threads} "
                f"--open-duration {self.open_duration_s} --rate-low {self.rate_low} --rate-high {self.rate_high} "
                f"--soak {self.soak_s}")
        if self.warmup_s != DEFAULT_WARMUP_S:
            line += f" --warmup {self.warmup_s}"
        if self.compare_entry:
            line += " --compare-entry"
        if not self.faults:
            line += " --no-faults"
        return line


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Read the command line; ``--smoke`` changes the defaults, explicit options still win."""
    parser = argparse.ArgumentParser(
        prog="bin/bench",
        description="Drive the HTTP shim with concurrent keep-alive clients (wrk) against a fast local guard "
                    "(nginx) for a fixed time, and print req/s, p50, p99, errors and CPU per request, next to the "
                    "same load sent straight to the guard. Then two fault measurements (skip them with "
                    "--no-faults): isolation, the same load through the shim without and with a second guard "
                    "hung (a bench-made server that never answers, called by a second wrk with "
                    f"{HUNG_CONNECTIONS} connections and a {HUNG_TIMEOUT_S} s timeout); and fail-fast, p50/p99 "
                    f"of a guard whose circuit breaker is open ({FAIL_CONNECTIONS} connections, "
                    f"AEYON_BREAKER_OPEN={BREAKER_OPEN_S}), where 503 circuit_open is the expected answer. Open "
                    "loop (requests on a fixed schedule, latency from the scheduled time): the latency the shim "
                    "adds at --rate-low, its p99 at --rate-high, and the p99 while the breaker is open. The Python "
                    f"gateway from {GATEWAY_THREADS} threads; the memory of an idle orchestrator with six guards, "
                    "its time to start, and the memory growth over a soak. Last, each figure of issue 6 next to "
                    "its goal.")
    parser.add_argument("--duration", type=_positive_int, metavar="S",
                        help=f"seconds per measured run (default {DEFAULT_DURATION_S}; --smoke: {SMOKE_DURATION_S})")
    parser.add_argument("--connections", type=_positive_int, metavar="N",
                        help=f"keep-alive connections (default {DEFAULT_CONNECTIONS}; --smoke: {SMOKE_CONNECTIONS})")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help=f"wrk threads (default {DEFAULT_THREADS}, to leave the server its cores)")
    parser.add_argument("--warmup", type=_non_negative_int, metavar="S",
                        help=f"unreported warm-up seconds before each run, wrk or open loop, at its load (default "
                             f"{DEFAULT_WARMUP_S}; --smoke: 0)")
    parser.add_argument("--open-duration", type=_positive_int, metavar="S",
                        help=f"seconds per open-loop run (default {DEFAULT_OPEN_DURATION_S}; --smoke: "
                             f"{SMOKE_OPEN_DURATION_S})")
    parser.add_argument("--rate-low", type=_positive_int, metavar="R",
                        help=f"requests/s offered for the added latency, open loop (default {DEFAULT_RATE_LOW})")
    parser.add_argument("--rate-high", type=_positive_int, metavar="R",
                        help=f"requests/s offered for the p99 and the breaker-open p99, open loop (default "
                             f"{DEFAULT_RATE_HIGH})")
    parser.add_argument("--soak", type=_non_negative_int, metavar="S",
                        help=f"seconds of the memory soak at half the shim's req/s, after a {SOAK_WARMUP_S} s "
                             f"warm-up (default {DEFAULT_SOAK_S}; --smoke: {SMOKE_SOAK_S} after "
                             f"{SMOKE_SOAK_WARMUP_S} s; 0: no soak)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"quick run for the test suite: {SMOKE_DURATION_S} s, {SMOKE_CONNECTIONS} connections, "
                             f"no warm-up, {SMOKE_OPEN_DURATION_S} s open-loop runs, a {SMOKE_SOAK_S} s soak")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument("--compare-entry", action="store_true",
                        help="also measure the alternative HTTP entry (bin/threaded_entry.py: a threaded stdlib "
                             "server calling the orchestrator through the Python gateway)")
    parser.add_argument("--no-faults", dest="faults", action="store_false",
                        help="skip the isolation (one guard hung) and fail-fast (breaker open) measurements")
    parser.add_argument("--nodes", metavar="N[,N...]",
                        help="the multi-node mode instead of the above (bin/scale.py): for each N, a leader and N-1 "
                             "members (aeyon serve --join) with every guard placed on a member, wrk through the "
                             "shim to the six guards in turn; e.g. --nodes 1,2")
    parser.add_argument("--cores", metavar="C[,C...]",
                        help="with --nodes: confine the orchestrator's processes to C cores for each C (wrk and "
                             "nginx get the cores above; default: all cores, shared)")
    parser.add_argument("--shims", metavar="K[,K...]", help="with --nodes: AEYON_SHIMS for each K (default 1)")
    args = parser.parse_args(argv)
    if (args.cores or args.shims) and not args.nodes:
        parser.error("--cores and --shims go with --nodes")
    settings = Settings(
        duration_s=_first(args.duration, SMOKE_DURATION_S if args.smoke else DEFAULT_DURATION_S),
        connections=_first(args.connections, SMOKE_CONNECTIONS if args.smoke else DEFAULT_CONNECTIONS),
        threads=_first(args.threads, DEFAULT_THREADS),
        warmup_s=_first(args.warmup, 0 if args.smoke else DEFAULT_WARMUP_S),
        smoke=args.smoke,
        json_path=args.json,
        compare_entry=args.compare_entry,
        faults=args.faults,
        open_duration_s=_first(args.open_duration, SMOKE_OPEN_DURATION_S if args.smoke else DEFAULT_OPEN_DURATION_S),
        rate_low=_first(args.rate_low, DEFAULT_RATE_LOW),
        rate_high=_first(args.rate_high, DEFAULT_RATE_HIGH),
        soak_s=_first(args.soak, SMOKE_SOAK_S if args.smoke else DEFAULT_SOAK_S),
        nodes=args.nodes,
        cores=args.cores,
        shims=args.shims,
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
    """The nginx standing in for a guard (``port``) and for a failing guard (``fail_port``)."""

    process: subprocess.Popen[bytes]
    port: int
    fail_port: int
    error_log: Path

    def pids(self) -> list[int]:
        """nginx's master and worker processes."""
        return process_tree(self.process.pid)


@contextlib.contextmanager
def guard_running(nginx: str, workdir: Path) -> Iterator[Guard]:
    """Start nginx as the guard and the failing guard on free loopback ports, wait until both answer, and always
    stop it."""
    port, fail_port = free_port(), free_port()
    tmp = workdir / "nginx"
    tmp.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.substitute(tmp=tmp, port=port, fail_port=fail_port, health=GUARD_HEALTH,
                                          verdict=GUARD_VERDICT, failure=FAIL_ANSWER))
    error_log = tmp / "error.log"
    output = tmp / "output.log"
    process = spawn([nginx, "-p", f"{tmp}/", "-c", str(conf), "-e", str(error_log)], env=None, log_path=output)
    try:
        guard = Guard(process, port, fail_port, error_log)
        for listening in (port, fail_port):
            if not wait_for(functools.partial(_answers, process, listening, "/health", "nginx", output),
                            NGINX_START_TIMEOUT_S):
                raise BenchError(f"bench: nginx did not answer on 127.0.0.1:{listening} within "
                                 f"{NGINX_START_TIMEOUT_S:g} s; its error log:\n{log_tail(error_log)}")
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


# -------------------------------------------------------------------------------------------------- the hung guard


class HungGuard:
    """A guard that hangs: a loopback HTTP/1.1 server in a thread of this process (stdlib ``selectors``). It answers
    a request whose line starts with ``GET /health`` with 200 and a healthy verdict (keeping the connection open),
    so the orchestrator sends it traffic; any other request it reads and never answers, and from then on it only
    reads and discards what comes on that connection until the client closes it."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._listener = socket.socket()
        self._wake_in, self._wake_out = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="bench-hung-guard", daemon=True)
        self._heads: dict[socket.socket, bytearray] = {}  # per open connection: what it sent, not yet a request
        self._holding: set[socket.socket] = set()  # connections with a request that is never answered
        self.port = 0
        self.health_answered = 0
        self.calls_held = 0  # requests received and never answered, in all
        self.failure: str | None = None  # why the thread ended, if it was not stopped

    @property
    def holding(self) -> int:
        """Connections that carry an unanswered request now."""
        return len(self._holding)

    @property
    def alive(self) -> bool:
        """Whether the server's thread is running."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Listen on a free loopback port and start serving in the thread."""
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._wake_in.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_in, selectors.EVENT_READ)
        self._thread.start()

    def stop(self) -> str | None:
        """Stop the thread and close every socket; a problem, if any."""
        problem = None
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._wake_out.send(b"\0")
            self._thread.join(HUNG_GUARD_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                problem = f"the hung guard's thread did not stop within {HUNG_GUARD_STOP_TIMEOUT_S:g} s"
        if self.failure:
            problem = f"the hung guard failed: {self.failure}"
        for conn in list(self._heads):
            self._drop(conn)
        self._selector.close()
        for sock in (self._listener, self._wake_in, self._wake_out):
            sock.close()
        return problem

    def _serve(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # reported by stop() and by the checks that wait on the thread
            self.failure = f"{type(exc).__name__}: {exc}"

    def _loop(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fileobj is self._wake_in:
                    return
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    assert isinstance(key.fileobj, socket.socket)
                    self._read(key.fileobj)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        self._heads[conn] = bytearray()
        self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        if conn in self._holding:
            return  # hung: what follows is read and dropped
        buffer = self._heads[conn]
        buffer += data
        while conn not in self._holding:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > HUNG_GUARD_MAX_HEAD:
                    self._drop(conn)
                return
            if not buffer.startswith(b"GET /health"):
                self._holding.add(conn)
                self.calls_held += 1
                buffer.clear()
                return
            length = HTTP_CONTENT_LENGTH.search(buffer, 0, end)
            size = end + 4 + (int(length.group(1)) if length else 0)
            if len(buffer) < size:
                return
            del buffer[:size]
            answer = GUARD_HEALTH.encode()
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
            except OSError:
                self._drop(conn)
                return
            self.health_answered += 1

    def _drop(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        self._heads.pop(conn, None)
        self._holding.discard(conn)
        conn.close()


@contextlib.contextmanager
def hung_guard_running(problems: list[str]) -> Iterator[HungGuard]:
    """Start the hung guard, check that it answers ``GET /health``, and always stop it; a problem while stopping
    is appended to ``problems``."""
    guard = HungGuard()
    try:
        guard.start()
        if not wait_for(lambda: _hung_guard_healthy(guard), NGINX_START_TIMEOUT_S):
            raise BenchError(f"bench: the hung guard did not answer GET /health on 127.0.0.1:{guard.port} within "
                             f"{NGINX_START_TIMEOUT_S:g} s")
        yield guard
    finally:
        with signals_deferred():
            problem = guard.stop()
        if problem:
            problems.append(problem)


def _hung_guard_healthy(guard: HungGuard) -> bool:
    if not guard.alive:
        raise BenchError(f"bench: the hung guard's thread stopped: {guard.failure}")
    try:
        return http_call(guard.port, "GET", "/health", timeout=1.0)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


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
    ready_s: float = 0.0  # from spawning ``aeyon serve`` to the first 200 from GET /ready

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
def orchestrator_running(guard_urls: Mapping[str, str], workdir: Path, problems: list[str],
                         settings: Mapping[str, str] | None = None, name: str = "serve") -> Iterator[Orchestrator]:
    """Start ``aeyon serve`` routing each ``NAME_URL`` of ``guard_urls`` to its guard, with the environment
    ``settings`` added, wait for ``GET /ready`` (timing it), and always stop it; what goes wrong while stopping is
    appended to ``problems``. Its log is ``name``.log in ``workdir``."""
    http_port, admin_port, tag = free_port(), free_port(), uuid.uuid4().hex
    env = clean_env({
        **guard_urls,
        **(settings or {}),
        "AEYON_PORT": str(http_port),
        "AEYON_ADMIN_PORT": str(admin_port),
        "AEYON_LOG_LEVEL": "WARNING",
        "SECURITY_MAX_REQUESTS_PER_MINUTE": MAX_RATE_LIMIT,
        TAG_VAR: tag,
    })
    log_path = workdir / f"{name}.log"
    spawned = time.monotonic()
    process = spawn([sys.executable, "-m", "system.cli", "serve"], env=env, log_path=log_path)
    orch = Orchestrator(process, http_port, admin_port, tag, env, log_path)
    try:
        if not wait_for(lambda: _answers(process, http_port, "/ready", "aeyon serve", log_path), START_TIMEOUT_S,
                        READY_POLL_S):
            raise BenchError(f"bench: aeyon serve was not ready within {START_TIMEOUT_S:g} s; its log:\n"
                             f"{log_tail(log_path)}")
        orch.ready_s = round(time.monotonic() - spawned, 3)
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


def kill_leftovers(pids: Callable[[], list[int]], what: str) -> list[str]:
    """Give the processes ``pids()`` names LEFTOVER_GRACE_S to exit after a stop, then SIGKILL those left; a
    problem naming them, if any."""
    if wait_for(lambda: not pids(), LEFTOVER_GRACE_S):
        return []
    names = []
    for pid in pids():
        try:
            names.append(f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}")
        except OSError:
            names.append(str(pid))
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return [f"processes of {what} left behind after the stop (killed): {', '.join(names)}"] if names else []


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
    problems.extend(kill_leftovers(orch.pids, "aeyon serve"))
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
    connections: int = 0
    # Answers by "STATUS" or "STATUS CODE" (the orchestrator's error code), when the run counted them.
    statuses: dict[str, int] = field(default_factory=dict)
    expected_statuses: tuple[int, ...] = ()  # non-2xx statuses that are the expected answer, not errors

    @property
    def expected(self) -> int:
        """Answers with one of the expected non-2xx statuses."""
        return _expected(self.statuses, self.expected_statuses)

    @property
    def errors(self) -> int:
        """Non-2xx/3xx answers other than the expected ones, plus socket errors (connect, read, write, timeout)."""
        return max(self.non_2xx - self.expected, 0) + sum(self.socket_errors.values())

    def answers(self, errors_only: bool = False) -> str:
        """The answers counted by status and error code, most first: "503 circuit_open 9120, 502 upstream_error 3";
        with ``errors_only``, only the non-2xx ones."""
        ranked = sorted(((key, count) for key, count in self.statuses.items()
                         if not errors_only or not key.startswith("2")), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{key} {count}" for key, count in ranked) or "none counted"

    @property
    def cpu_ms_per_request(self) -> float | None:
        """Server CPU milliseconds per completed request."""
        if self.cpu_s is None or not self.requests:
            return None
        return self.cpu_s * 1000.0 / self.requests

    def as_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        return {**asdict(self), "errors": self.errors, "expected": self.expected,
                "cpu_ms_per_request": _rounded(self.cpu_ms_per_request)}


def _expected(statuses: Mapping[str, int], expected_statuses: tuple[int, ...]) -> int:
    """The answers counted in ``statuses`` ("STATUS" or "STATUS CODE") with one of ``expected_statuses``."""
    return sum(count for key, count in statuses.items() if int(key.split()[0]) in expected_statuses)


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
        "statuses": {match.group(1): int(match.group(2)) for match in WRK_STATUS.finditer(output)},
    }


def _percentile_ms(output: str, percent: str) -> float | None:
    match = re.search(WRK_PERCENTILE.format(percent), output, re.MULTILINE)
    if not match:
        return None
    return round(float(match.group(1)) * TIME_UNITS_MS[match.group(2)], 4)


def wrk_command(wrk: str, threads: int, connections: int, duration_s: int, url: str, script: Path) -> list[str]:
    """The wrk command line: ``connections`` keep-alive connections over at most ``threads`` threads."""
    return [wrk, "--latency", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration_s}s",
            "--timeout", WRK_REQUEST_TIMEOUT, "-s", str(script), url]


def run_wrk(wrk: str, settings: Settings, duration_s: int, url: str, script: Path,
            connections: int | None = None) -> str:
    """Run wrk against ``url`` for ``duration_s`` seconds (with the settings' connections unless given); its
    output."""
    command = wrk_command(wrk, settings.threads, connections or settings.connections, duration_s, url, script)
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
            workdir: Path, server_pids: Callable[[], list[int]], cpu_of: str, *, connections: int | None = None,
            warmup: bool = True, expected_statuses: tuple[int, ...] | None = None) -> RunResult:
    """Warm up (unreported, unless ``warmup`` is false), then one measured wrk run, sampling the server's CPU time
    around it. With ``expected_statuses`` (empty or not), wrk counts the answers by status and error code, and those
    statuses are not errors (the runs through the shim pass an empty tuple: counted, none expected)."""
    connections = connections or settings.connections
    script = workdir / f"{name}.lua"
    template = WRK_SCRIPT if expected_statuses is None else COUNTING_WRK_SCRIPT
    script.write_text(template.substitute(body=body))
    url = f"http://127.0.0.1:{port}{path}"
    if warmup and settings.warmup_s:
        print(f"bench: {label}: warm-up {settings.warmup_s} s ...", file=sys.stderr)
        run_wrk(wrk, settings, settings.warmup_s, url, script, connections)
    print(f"bench: {label}: {settings.duration_s} s, {connections} connections ...", file=sys.stderr)
    before = cpu_seconds(server_pids())
    output = run_wrk(wrk, settings, settings.duration_s, url, script, connections)
    after = cpu_seconds(server_pids())
    return RunResult(name=name, label=label, url=url, body=body, cpu_s=round(after - before, 3), cpu_of=cpu_of,
                     connections=connections, expected_statuses=expected_statuses or (), **parse_wrk(output))


@dataclass
class Load:
    """A wrk running in the background (the hung guard's callers) until it is stopped."""

    process: subprocess.Popen[bytes]
    command: list[str]
    log_path: Path
    started: float  # time.monotonic()

    def finish(self) -> str:
        """Stop it (SIGINT: wrk stops, prints its figures and runs the script's ``done``); its output."""
        if self.process.poll() is not None:
            raise BenchError(f"bench: the background wrk ended by itself, with {self.process.returncode}, before "
                             f"it was stopped: {shlex.join(self.command)}\n{log_tail(self.log_path)}")
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(LOAD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BenchError(f"bench: the background wrk did not stop within {LOAD_STOP_TIMEOUT_S:g} s of SIGINT: "
                             f"{shlex.join(self.command)}") from None
        output = self.log_path.read_text(errors="replace")
        if code != 0:
            raise BenchError(f"bench: the background wrk exited with {code}: {shlex.join(self.command)}\n"
                             f"{output.strip()}")
        return output


@contextlib.contextmanager
def load_running(wrk: str, name: str, port: int, body: str, connections: int, longest_s: int,
                 workdir: Path) -> Iterator[Load]:
    """Start wrk POSTing ``body`` through the shim with ``connections`` connections, counting the answers, for at
    most ``longest_s`` seconds (it is meant to be stopped with ``Load.finish``); always stop it."""
    script = workdir / f"{name}.lua"
    script.write_text(COUNTING_WRK_SCRIPT.substitute(body=body))
    command = wrk_command(wrk, 1, connections, longest_s, f"http://127.0.0.1:{port}{SHIM_PATH}", script)
    load = Load(spawn(command, env=None, log_path=workdir / f"{name}.out"), command, workdir / f"{name}.out",
                time.monotonic())
    try:
        yield load
    finally:
        with signals_deferred():
            if load.process.poll() is None:
                load.process.send_signal(signal.SIGINT)
                try:
                    load.process.wait(LOAD_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    load.process.kill()
                    load.process.wait()


def trip_breaker(port: int, body: str, service: str) -> int:
    """Send ``body`` through the shim, one request after the other, until an answer is ``circuit_open`` (at most
    TRIP_MAX_TRIES); the number of requests it took."""
    seen: Counter[str] = Counter()
    for attempt in range(1, TRIP_MAX_TRIES + 1):
        try:
            status, raw = http_call(port, "POST", SHIM_PATH, body, timeout=10.0)
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"bench: a request to {service} (tripping its breaker) failed: {exc}") from None
        code = _error_code(raw)
        if code == "circuit_open":
            return attempt
        seen[f"{status} {code or '(no error code)'}"] += 1
    answers = ", ".join(f"{key} x{count}" for key, count in seen.most_common())
    raise BenchError(f"bench: {service}'s breaker did not open within {TRIP_MAX_TRIES} requests; the answers: "
                     f"{answers}")


def _error_code(raw: bytes) -> str | None:
    try:
        answer = json.loads(raw)
    except ValueError:
        return None
    error = answer.get("error") if isinstance(answer, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


# -------------------------------------------------------------------------------------------------------- open loop


@dataclass
class OpenRun:
    """One open-loop run (bin/openloop.py), with the server's CPU time over it."""

    name: str
    label: str
    result: openloop.OpenLoopResult
    cpu_s: float | None = None
    cpu_of: str = ""
    expected_statuses: tuple[int, ...] = ()  # non-2xx statuses that are the expected answer, not errors

    @property
    def expected(self) -> int:
        """Answers with one of the expected non-2xx statuses."""
        return _expected(self.result.statuses, self.expected_statuses)

    @property
    def errors(self) -> int:
        """Non-2xx answers other than the expected ones, requests that failed (connect, connection closed,
        unreadable answer) and requests still unanswered at the end."""
        non_2xx = sum(count for key, count in self.result.statuses.items() if not key.startswith("2"))
        return non_2xx - self.expected + sum(self.result.failures.values()) + self.result.unanswered

    @property
    def cpu_ms_per_request(self) -> float | None:
        """Server CPU milliseconds per answered request."""
        if self.cpu_s is None or not self.result.answered:
            return None
        return self.cpu_s * 1000.0 / self.result.answered

    @property
    def generator_cpu_share(self) -> float:
        """The load generator's CPU time over the run's time: the share of one core it took."""
        return self.result.cpu_s / max(self.result.elapsed_s, self.result.duration_s)

    def answers(self) -> str:
        """The answers by status and error code, most first, then the failures: "200 980, unanswered 20"."""
        counted = [*self.result.statuses.items(), *self.result.failures.items(), ("unanswered", self.result.unanswered)]
        ranked = sorted(((key, count) for key, count in counted if count), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{key} {count}" for key, count in ranked) or "none"

    def as_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        return {"name": self.name, "label": self.label, **self.result.as_json(), "errors": self.errors,
                "expected": self.expected, "expected_statuses": list(self.expected_statuses), "cpu_s": self.cpu_s,
                "cpu_of": self.cpu_of, "cpu_ms_per_request": _rounded(self.cpu_ms_per_request),
                "generator_cpu_share": _rounded(self.generator_cpu_share)}


def measure_open_loop(name: str, label: str, port: int, path: str, body: str, rate: int, duration_s: int,
                      server_pids: Callable[[], list[int]], cpu_of: str, *, warmup_s: int = 0,
                      expected_statuses: tuple[int, ...] = ()) -> OpenRun:
    """``rate`` requests/s POSTing ``body`` to ``path`` for ``duration_s`` seconds, open loop, sampling the
    server's CPU time around it; after ``warmup_s`` seconds of the same, unreported."""
    target = openloop.Target("127.0.0.1", port, path, body)
    if warmup_s:
        print(f"bench: {label}: warm-up {warmup_s} s ...", file=sys.stderr)
        openloop.run(target, rate, warmup_s, OPEN_CONNECTIONS, OPEN_DRAIN_S)
    print(f"bench: {label}: open loop, {rate} req/s for {duration_s} s ...", file=sys.stderr)
    before = cpu_seconds(server_pids())
    result = openloop.run(target, rate, duration_s, OPEN_CONNECTIONS, OPEN_DRAIN_S)
    after = cpu_seconds(server_pids())
    return OpenRun(name, label, result, round(after - before, 3), cpu_of, expected_statuses)


def measure_latencies(settings: Settings, guard: Guard, orch: Orchestrator) -> list[OpenRun]:
    """Open loop at the low rate straight to nginx and through the shim, then at the high rate through the shim,
    each after the settings' warm-up (the orchestrator starts guard workers on demand and lets idle ones go)."""
    return [
        measure_open_loop("open-direct", f"direct to guard, {settings.rate_low}/s", guard.port, DIRECT_PATH,
                          DIRECT_BODY, settings.rate_low, settings.open_duration_s, guard.pids, "nginx",
                          warmup_s=settings.warmup_s),
        measure_open_loop("open-shim", f"through the shim, {settings.rate_low}/s", orch.http_port, SHIM_PATH,
                          SHIM_BODY, settings.rate_low, settings.open_duration_s, orch.pids, SHIM_CPU_OF,
                          warmup_s=settings.warmup_s),
        measure_open_loop("open-shim-high", f"through the shim, {settings.rate_high}/s", orch.http_port, SHIM_PATH,
                          SHIM_BODY, settings.rate_high, settings.open_duration_s, orch.pids, SHIM_CPU_OF,
                          warmup_s=settings.warmup_s),
    ]


# ---------------------------------------------------------------------------------------------- the Python gateway


@dataclass
class GatewayRun:
    """Calls through the Python gateway from GATEWAY_THREADS threads (bin/gateway_load.py, a process of its own),
    with the orchestrator's CPU time over them."""

    threads: int
    requests: int
    ok: int
    statuses: dict[str, int]  # "success", "error CODE" or "exception NAME"
    elapsed_s: float
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    client_cpu_s: float  # the gateway process's CPU time over the calls
    cpu_s: float | None = None  # the orchestrator's, from the gateway process's start to its end

    @property
    def errors(self) -> int:
        """Calls that did not succeed."""
        return self.requests - self.ok

    @property
    def cpu_ms_per_request(self) -> float | None:
        """Orchestrator CPU milliseconds per call."""
        if self.cpu_s is None or not self.requests:
            return None
        return self.cpu_s * 1000.0 / self.requests

    def as_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        return {**asdict(self), "errors": self.errors, "cpu_ms_per_request": _rounded(self.cpu_ms_per_request)}


def measure_gateway(settings: Settings, orch: Orchestrator, workdir: Path) -> GatewayRun:
    """Run bin/gateway_load.py against the orchestrator for ``settings.duration_s`` seconds; its figures. The
    process does not carry the orchestrator's tag: its CPU time is the client's, not the server's."""
    out, log_path = workdir / "gateway.json", workdir / "gateway.log"
    command = [sys.executable, str(ROOT / "bin" / "gateway_load.py"), "--admin-port", str(orch.admin_port),
               "--out", str(out), "--threads", str(GATEWAY_THREADS), "--duration", str(settings.duration_s),
               "--service", "tokenguard", "--payload", json.dumps(json.loads(SHIM_BODY)["payload"])]
    env = {name: value for name, value in orch.env.items() if name != TAG_VAR}
    print(f"bench: Python gateway: {GATEWAY_THREADS} threads, {settings.duration_s} s ...", file=sys.stderr)
    before = cpu_seconds(orch.pids())
    process = spawn(command, env=env, log_path=log_path)
    try:
        code = process.wait(settings.duration_s + GATEWAY_GRACE_S)
    except subprocess.TimeoutExpired:
        raise BenchError(f"bench: the gateway's load did not finish within {settings.duration_s + GATEWAY_GRACE_S:g}"
                         f" s: {shlex.join(command)}\n{log_tail(log_path)}") from None
    finally:
        with signals_deferred():
            if process.poll() is None:
                process.kill()
                process.wait()
    after = cpu_seconds(orch.pids())
    if code != 0 or not out.exists():
        raise BenchError(f"bench: the gateway's load exited with {code}: {shlex.join(command)}\n{log_tail(log_path)}")
    figures = json.loads(out.read_text())
    return GatewayRun(threads=figures["threads"], requests=figures["requests"], ok=figures["ok"],
                      statuses=figures["statuses"], elapsed_s=figures["elapsed_s"],
                      requests_per_s=figures["requests_per_s"], p50_ms=figures["p50_ms"], p99_ms=figures["p99_ms"],
                      max_ms=figures["max_ms"], client_cpu_s=figures["cpu_s"], cpu_s=round(after - before, 3))


# -------------------------------------------------------------------------------------------- memory and start-up


def pss_kb(pids: Iterable[int]) -> tuple[int, int]:
    """The sum of the proportional set sizes of the processes ``pids`` in kB (``Pss:`` of
    /proc/PID/smaps_rollup), and how many processes were read (one that has exited is skipped)."""
    total = read = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        match = PSS_LINE.search(text)
        if match:
            total += int(match.group(1))
            read += 1
    return total, read


def _mb(kb: int) -> float:
    """kB (as /proc counts them: 1,024 bytes) in MB (10^6 bytes)."""
    return kb * 1024 / 1e6


@dataclass
class IdleMemory:
    """An orchestrator with every guard routed (to nginx), idle: its time to start and its memory."""

    guards: int
    ready_s: float
    idle_s: float
    pss_kb: int
    processes: int

    def as_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        return {**asdict(self), "pss_mb": round(_mb(self.pss_kb), 2)}


def measure_idle_memory(guard: Guard, workdir: Path, problems: list[str]) -> IdleMemory:
    """Start an orchestrator with all six guards routed to nginx, let it idle for IDLE_S seconds once ready, sum
    the PSS of its processes, and stop it."""
    urls = {service.env_var: f"http://127.0.0.1:{guard.port}" for service in SERVICE_TYPES.values()}
    print(f"bench: memory: an orchestrator with {len(urls)} guards, idle for {IDLE_S:g} s ...", file=sys.stderr)
    with orchestrator_running(urls, workdir, problems, name="serve-idle") as orch:
        time.sleep(IDLE_S)
        kb, processes = pss_kb(orch.pids())
    if not processes:
        raise BenchError("bench: memory: no process of the orchestrator could be read in /proc")
    return IdleMemory(len(urls), orch.ready_s, IDLE_S, kb, processes)


@dataclass
class Soak:
    """Open loop through the shim at half the shim's throughput: a warm-up, then the soak; the orchestrator's PSS
    between the two and at the end."""

    rate: int
    warmup: OpenRun
    run: OpenRun
    pss_start_kb: int
    pss_end_kb: int
    # The actors whose PSS grew most over the soak: (actor, kB at the start, kB at the end).
    growers: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def growth_pct(self) -> float | None:
        """How much the PSS grew over the soak, in percent of its start."""
        return (self.pss_end_kb - self.pss_start_kb) * 100.0 / self.pss_start_kb if self.pss_start_kb else None

    def as_json(self) -> dict[str, Any]:
        """The memory figures and the runs' names (the runs themselves are in "open_loop")."""
        return {"rate": self.rate, "warmup_run": self.warmup.name, "run": self.run.name,
                "pss_start_mb": round(_mb(self.pss_start_kb), 2), "pss_end_mb": round(_mb(self.pss_end_kb), 2),
                "growth_pct": _rounded(self.growth_pct, 3),
                "growers": [{"actor": name, "start_kb": start, "end_kb": end} for name, start, end in self.growers]}


def measure_soak(settings: Settings, orch: Orchestrator, shim_requests_per_s: float) -> Soak:
    """Open loop through the shim at half ``shim_requests_per_s``: ``settings.soak_warmup_s`` seconds, the PSS, then
    ``settings.soak_s`` seconds, the PSS again."""
    rate = max(round(shim_requests_per_s / 2), 1)
    warmup = measure_open_loop("soak-warmup", f"soak warm-up, {rate}/s", orch.http_port, SHIM_PATH, SHIM_BODY, rate,
                               settings.soak_warmup_s, orch.pids, SHIM_CPU_OF)
    start_kb, _ = pss_kb(orch.pids())
    start = pss_by_actor(orch)
    run = measure_open_loop("soak", f"soak, {rate}/s", orch.http_port, SHIM_PATH, SHIM_BODY, rate, settings.soak_s,
                            orch.pids, SHIM_CPU_OF)
    end_kb, _ = pss_kb(orch.pids())
    end = pss_by_actor(orch)
    growers = sorted(((name, start.get(name, 0), kb) for name, kb in end.items()),
                     key=lambda row: row[1] - row[2])[:SOAK_GROWERS]
    return Soak(rate, warmup, run, start_kb, end_kb, growers)


def pss_by_actor(orch: Orchestrator) -> dict[str, int]:
    """The PSS (kB) of each process of the orchestrator, by its actor's path in ``GET /v1/actors`` (processes that
    are no actor, such as Thespian's admin, by their pid)."""
    names: dict[int, str] = {}
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError, KeyError):
        status, raw = http_call(orch.http_port, "GET", "/v1/actors", timeout=5.0)
        if status == 200:
            def walk(node: dict[str, Any], path: str) -> None:
                here = f"{path}/{node['name']}" if path else node["name"]
                if node.get("pid"):
                    names[node["pid"]] = here
                for child in node.get("children", []):
                    walk(child, here)
            walk(json.loads(raw), "")
    return {names.get(pid, f"pid {pid}"): pss_kb([pid])[0] for pid in orch.pids()}


# ----------------------------------------------------------------------------------------------------------- faults


SHIM_CPU_OF = "aeyon serve and its actor processes"


@dataclass
class Isolation:
    """Tokenguard through the shim without and with trustguard hung, and what trustguard's callers got."""

    baseline: RunResult
    hung: RunResult
    callers: RunResult  # the background wrk calling the hung guard (no CPU figure: it overlaps both runs)
    calls_held: int  # requests the hung guard received (and never answered) while the load ran

    @property
    def requests_per_s_ratio(self) -> float | None:
        """req/s with the guard hung over req/s without."""
        return _ratio(self.hung.requests_per_s, self.baseline.requests_per_s)

    @property
    def p99_ratio(self) -> float | None:
        """p99 with the guard hung over p99 without."""
        return _ratio(self.hung.p99_ms, self.baseline.p99_ms)

    def as_json(self) -> dict[str, Any]:
        """The comparison as a JSON object (the two tokenguard runs are in "runs")."""
        return {"baseline": self.baseline.name, "hung": self.hung.name,
                "requests_per_s_ratio": _rounded(self.requests_per_s_ratio),
                "p99_ratio": _rounded(self.p99_ratio), "hung_guard_calls_held": self.calls_held,
                "hung_guard_callers": self.callers.as_json()}


@dataclass
class FailFast:
    """Answers from a guard whose breaker is open: closed loop (wrk), then open loop."""

    run: RunResult
    trip_requests: int  # sequential requests it took to see circuit_open before the run
    open_run: OpenRun
    open_trip_requests: int  # the same before the open-loop run (1: the breaker was still open)

    def as_json(self) -> dict[str, Any]:
        """The runs' names and how the breaker was tripped (the runs themselves are in "runs" and "open_loop")."""
        return {"run": self.run.name, "trip_requests": self.trip_requests, "open_loop_run": self.open_run.name,
                "open_loop_trip_requests": self.open_trip_requests, "breaker_open_s": float(BREAKER_OPEN_S)}


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def measure_isolation(wrk: str, settings: Settings, orch: Orchestrator, hung_guard: HungGuard,
                      workdir: Path) -> Isolation:
    """The baseline run to tokenguard through the shim, then the same run while a second wrk calls trustguard
    (hung): that load starts first, and the measurement (its warm-up included) begins once the hung guard holds a
    call from it and HUNG_LEAD_S has passed; the load is stopped right after."""
    baseline = measure(wrk, settings, "isolation-baseline", "isolation: baseline", orch.http_port, SHIM_PATH,
                       SHIM_BODY, workdir, orch.pids, SHIM_CPU_OF, expected_statuses=())
    longest_s = int(HUNG_REACH_TIMEOUT_S + HUNG_LEAD_S) + 1 + settings.warmup_s + 2 * (settings.duration_s
                                                                                        + WRK_GRACE_S)
    held_before = hung_guard.calls_held
    print(f"bench: isolation: {HUNG_CONNECTIONS} connections calling trustguard (hung, timeout {HUNG_TIMEOUT_S} s) "
          "...", file=sys.stderr)
    with load_running(wrk, "hung-callers", orch.http_port, HUNG_BODY, HUNG_CONNECTIONS, longest_s, workdir) as load:

        def reached() -> bool:
            if load.process.poll() is not None:
                raise BenchError(f"bench: the wrk calling the hung guard exited with {load.process.returncode}:\n"
                                 f"{log_tail(load.log_path)}")
            if not hung_guard.alive:
                raise BenchError(f"bench: the hung guard's thread stopped: {hung_guard.failure}")
            return hung_guard.calls_held > held_before and time.monotonic() - load.started >= HUNG_LEAD_S

        if not wait_for(reached, HUNG_REACH_TIMEOUT_S):
            raise BenchError(f"bench: the hung guard received no call within {HUNG_REACH_TIMEOUT_S:g} s of the load "
                             f"on trustguard; the tail of the serve log:\n{log_tail(orch.log_path)}")
        hung = measure(wrk, settings, "isolation-hung", "isolation: one guard hung", orch.http_port, SHIM_PATH,
                       SHIM_BODY, workdir, orch.pids, SHIM_CPU_OF + ", serving the hung guard's callers too",
                       expected_statuses=())
        output = load.finish()
    callers = RunResult(name="hung-callers", label="the hung guard's callers",
                        url=f"http://127.0.0.1:{orch.http_port}{SHIM_PATH}", body=HUNG_BODY,
                        connections=HUNG_CONNECTIONS, expected_statuses=HUNG_EXPECTED, **parse_wrk(output))
    return Isolation(baseline, hung, callers, hung_guard.calls_held - held_before)


@dataclass
class OpenIsolation:
    """Tokenguard through the shim at a fixed rate, without and with the hung guard called at a fixed rate too."""

    baseline: OpenRun
    hung: OpenRun
    callers_rate: int
    callers: openloop.OpenLoopResult  # what the hung guard's callers got

    @property
    def p99_ratio(self) -> float | None:
        """p99 with the guard hung over p99 without."""
        return _ratio(self.hung.result.p99_ms, self.baseline.result.p99_ms)


def measure_open_isolation(settings: Settings, orch: Orchestrator, hung_guard: HungGuard) -> OpenIsolation:
    """Open loop to tokenguard at ``--rate-high``, then the same while a second open loop calls the hung guard at
    HUNG_OPEN_RATE requests/s (with its ``"timeout": 2``): isolation at a rate the machine can serve, where the
    wrk runs measure it with both loads saturating the cores."""
    rate, duration = settings.rate_high, settings.open_duration_s
    baseline = measure_open_loop("isolation-open-baseline", f"isolation {rate}/s, alone", orch.http_port,
                                 SHIM_PATH, SHIM_BODY, rate, duration, orch.pids, SHIM_CPU_OF,
                                 warmup_s=settings.warmup_s)
    target = openloop.Target("127.0.0.1", orch.http_port, SHIM_PATH, HUNG_BODY)
    callers: list[openloop.OpenLoopResult] = []
    longest = HUNG_REACH_TIMEOUT_S + HUNG_LEAD_S + settings.warmup_s + duration + 1
    thread = threading.Thread(target=lambda: callers.append(openloop.run(target, HUNG_OPEN_RATE, longest)),
                              daemon=True)
    held_before, started = hung_guard.calls_held, time.monotonic()
    print(f"bench: isolation: trustguard (hung) called at {HUNG_OPEN_RATE}/s, open loop ...", file=sys.stderr)
    thread.start()
    if not wait_for(lambda: hung_guard.calls_held > held_before and time.monotonic() - started >= HUNG_LEAD_S,
                    HUNG_REACH_TIMEOUT_S):
        raise BenchError(f"bench: the hung guard received no call within {HUNG_REACH_TIMEOUT_S:g} s")
    hung = measure_open_loop("isolation-open-hung", f"isolation {rate}/s, 1 hung", orch.http_port,
                             SHIM_PATH, SHIM_BODY, rate, duration, orch.pids,
                             SHIM_CPU_OF + ", serving the hung guard's callers too", warmup_s=settings.warmup_s)
    thread.join(longest + OPEN_DRAIN_S + HUNG_TIMEOUT_S + 10)
    if not callers:
        raise BenchError("bench: the open loop calling the hung guard did not finish")
    return OpenIsolation(baseline, hung, HUNG_OPEN_RATE, callers[0])


def measure_fail_fast(wrk: str, settings: Settings, orch: Orchestrator, workdir: Path) -> FailFast:
    """Trip biasguard's breaker, then one run (no warm-up) through the shim to biasguard while it is open; then trip
    it again (one request, when it is still open) and send ``settings.rate_high`` requests/s to it, open loop."""
    print("bench: fail-fast: tripping biasguard's breaker ...", file=sys.stderr)
    tries = trip_breaker(orch.http_port, FAIL_BODY, "biasguard")
    run = measure(wrk, settings, "fail-fast", "fail-fast: breaker open", orch.http_port, SHIM_PATH, FAIL_BODY,
                  workdir, orch.pids, SHIM_CPU_OF, connections=FAIL_CONNECTIONS, warmup=False,
                  expected_statuses=FAIL_EXPECTED)
    open_tries = trip_breaker(orch.http_port, FAIL_BODY, "biasguard")
    open_run = measure_open_loop("breaker-open", f"breaker open, {settings.rate_high}/s", orch.http_port, SHIM_PATH,
                                 FAIL_BODY, settings.rate_high, settings.open_duration_s, orch.pids, SHIM_CPU_OF,
                                 expected_statuses=FAIL_EXPECTED)
    return FailFast(run, tries, open_run, open_tries)


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


@dataclass
class Figures:
    """Everything one benchmark run measured; what could not be measured stays empty (and its problem is reported)."""

    results: list[RunResult] = field(default_factory=list)  # the wrk runs
    open_runs: list[OpenRun] = field(default_factory=list)
    isolation: Isolation | None = None
    open_isolation: OpenIsolation | None = None
    fail_fast: FailFast | None = None
    gateway: GatewayRun | None = None
    idle: IdleMemory | None = None
    soak: Soak | None = None
    ready_s: float | None = None  # the measured orchestrator's (three guards) start to ready (the six guards': idle)

    def run(self, name: str) -> RunResult | None:
        """The wrk run named ``name``, if it was made."""
        return next((result for result in self.results if result.name == name), None)

    def open_run(self, name: str) -> OpenRun | None:
        """The open-loop run named ``name``, if it was made."""
        return next((run for run in self.open_runs if run.name == name), None)

    def failed(self) -> bool:
        """Whether a run had errors or completed nothing."""
        return (any(result.errors or not result.requests for result in self.results)
                or any(run.errors or not run.result.answered for run in self.open_runs)
                or (self.isolation is not None and self.isolation.callers.errors > 0)
                or (self.gateway is not None and (self.gateway.errors > 0 or not self.gateway.requests)))


@dataclass(frozen=True)
class Goal:
    """One figure of issue 6 next to its goal; ``value`` is None when this run did not measure it."""

    key: str  # its name in the JSON
    figure: str
    value: float | None
    unit: str  # "req/s", "ms", "x", "MB", "%" or "s"
    limit: float
    at_least: bool  # the goal is value >= limit (else value <= limit)
    note: str = ""  # the figures it comes from, the baseline

    @property
    def met(self) -> bool | None:
        """Whether the value meets the goal (None: not measured)."""
        if self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def verdict(self) -> str:
        """"met", "MISSED" or "not measured"."""
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]

    @property
    def goal(self) -> str:
        """The goal as text: "<= 25 ms"."""
        limit = f"x{self.limit:g}" if self.unit == "x" else f"{self.limit:,g} {self.unit}"
        return f"{'>=' if self.at_least else '<='} {limit}"

    def as_json(self) -> dict[str, Any]:
        """The goal as a JSON object."""
        return {"key": self.key, "figure": self.figure, "value": _rounded(self.value), "unit": self.unit,
                "limit": self.limit, "at_least": self.at_least, "goal": self.goal, "met": self.met, "note": self.note}


def goals(settings: Settings, figures: Figures) -> list[Goal]:
    """The figures of issue 6's table, in its order, from what this run measured."""
    return [_throughput_goal(settings, figures), _added_latency_goal(settings, figures),
            _p99_goal(settings, figures), _breaker_goal(settings, figures), _isolation_goal(figures),
            _open_isolation_goal(settings, figures),
            _gateway_goal(figures), *_memory_goals(settings, figures)]


def _throughput_goal(settings: Settings, figures: Figures) -> Goal:
    shim, direct = figures.run("shim"), figures.run("direct")
    return Goal("shim_throughput", f"throughput through the HTTP shim, {settings.connections} connections",
                shim.requests_per_s if shim else None, "req/s", 2500, True,
                f"wrk; direct to nginx {direct.requests_per_s:,.0f} req/s" if direct else "wrk")


def _added_latency_goal(settings: Settings, figures: Figures) -> Goal:
    shim, direct = figures.open_run("open-shim"), figures.open_run("open-direct")
    shim_p50 = shim.result.p50_ms if shim else None
    direct_p50 = direct.result.p50_ms if direct else None
    added = None if shim_p50 is None or direct_p50 is None else shim_p50 - direct_p50
    return Goal("added_latency_p50", f"added latency p50 vs the guard direct, {settings.rate_low} req/s", added,
                "ms", 1.5, False, f"open loop: shim p50 {_ms(shim_p50)} ms - direct p50 {_ms(direct_p50)} ms")


def _p99_goal(settings: Settings, figures: Figures) -> Goal:
    run = figures.open_run("open-shim-high")
    note = (f"open loop: {run.result.answered} of {run.result.scheduled} answered at "
            f"{run.result.achieved_rate:,.0f} req/s, {run.errors} errors, p50 {_ms(run.result.p50_ms)} ms"
            if run else "open loop")
    return Goal("p99_high_rate", f"p99 at {settings.rate_high:,} req/s offered", run.result.p99_ms if run else None,
                "ms", 25, False, note)


def _breaker_goal(settings: Settings, figures: Figures) -> Goal:
    fail = figures.fail_fast
    note = (f"open loop at {settings.rate_high:,} req/s; wrk with {fail.run.connections} connections: p99 "
            f"{_ms(fail.run.p99_ms)} ms" if fail else "open loop")
    return Goal("breaker_open_p99", "answer while a breaker is open, p99",
                fail.open_run.result.p99_ms if fail else None, "ms", 2, False, note)


def _isolation_goal(figures: Figures) -> Goal:
    iso = figures.isolation
    note = f"wrk: p99 {_ms(iso.hung.p99_ms)} ms / {_ms(iso.baseline.p99_ms)} ms" if iso else "wrk"
    return Goal("isolation_p99_ratio", "isolation: other guards' p99, one guard hung / none",
                iso.p99_ratio if iso else None, "x", 1.2, False, note)


def _open_isolation_goal(settings: Settings, figures: Figures) -> Goal:
    iso = figures.open_isolation
    note = (f"open loop: p99 {_ms(iso.hung.result.p99_ms)} ms / {_ms(iso.baseline.result.p99_ms)} ms; the hung "
            f"guard's callers at {iso.callers_rate}/s got " + (", ".join(
                f"{key} {count}" for key, count in sorted(iso.callers.statuses.items())) or "no answer")
            if iso else "open loop")
    return Goal("isolation_open_p99_ratio",
                f"isolation at {settings.rate_high:,} req/s, the hung guard called at {HUNG_OPEN_RATE}/s",
                iso.p99_ratio if iso else None, "x", 1.2, False, note)


def _gateway_goal(figures: Figures) -> Goal:
    gw = figures.gateway
    note = f"p50 {_ms(gw.p50_ms)} ms, p99 {_ms(gw.p99_ms)} ms, {gw.errors} errors" if gw else ""
    return Goal("gateway_throughput", f"Python gateway, Gateway.orchestrate from {GATEWAY_THREADS} threads",
                gw.requests_per_s if gw else None, "req/s", 1500, True, note)


def _memory_goals(settings: Settings, figures: Figures) -> list[Goal]:
    idle, soak = figures.idle, figures.soak
    ready = "" if figures.ready_s is None else f"the measured orchestrator (three guards) {figures.ready_s:.2f} s"
    return [
        Goal("idle_pss", "memory: PSS of all processes, idle, six guards", _mb(idle.pss_kb) if idle else None, "MB",
             250, False, f"{idle.processes} processes, {idle.idle_s:g} s after ready" if idle else ""),
        Goal("memory_growth", f"memory growth over a {settings.soak_s} s run at half the max throughput",
             soak.growth_pct if soak else None, "%", 5, False,
             f"PSS {_mb(soak.pss_start_kb):.1f} -> {_mb(soak.pss_end_kb):.1f} MB at {soak.rate:,} req/s, open loop"
             if soak else ""),
        Goal("start_to_ready", "start to ready, six guards", idle.ready_s if idle else None, "s", 3, False, ready),
    ]


def _amount(value: float | None, unit: str) -> str:
    """A figure with its unit, as the report shows it."""
    if value is None:
        return "-"
    if unit == "req/s":
        return f"{value:,.0f} req/s"
    if unit == "ms":
        return f"{_ms(value)} ms"
    if unit == "x":
        return f"x{value:.2f}"
    return f"{value:.1f} {unit}" if unit in ("MB", "%") else f"{value:.2f} {unit}"


def report(started: datetime.datetime, info: Mapping[str, Any], settings: Settings, figures: Figures) -> str:
    """The plain-text tables (wrk runs, open-loop runs, goals), with their legends and notes."""
    lines = [
        f"Aeyon bench — {started:%Y-%m-%d %H:%M} UTC",
        f"machine: {info['cpu']} x {info['cores']} cores, {info['memory_gib']} GiB, Linux {info['kernel']}, "
        f"Python {info['python']}, thespian {info['thespian']}",
        f"tools: wrk {info['wrk']} (closed loop), bin/openloop.py (open loop: one Python thread of the bench), "
        f"nginx {info['nginx']}",
        f"command: {settings.command()}",
        *_wrk_lines(figures),
    ]
    if figures.open_runs:
        lines += ["", *_open_loop_lines(figures.open_runs)]
    lines += ["", *_other_lines(settings, figures), "", *_goal_lines(goals(settings, figures))]
    return "\n".join(lines)


def _wrk_lines(figures: Figures) -> list[str]:
    isolation, fail_fast = figures.isolation, figures.fail_fast
    lines = [f"{'run':<27}{'req/s':<9}{'p50 ms':<9}{'p99 ms':<9}{'errors':<9}cpu ms/req"]
    for result in figures.results:
        lines.append(f"{result.label:<27}{result.requests_per_s:<9.0f}{_ms(result.p50_ms):<9}"
                     f"{_ms(result.p99_ms):<9}{result.errors:<9}{_ms(result.cpu_ms_per_request)}")
    lines.append("")
    lines.append("errors: non-2xx answers plus socket errors; cpu ms/req: CPU time per request of nginx (direct) "
                 "and of the orchestrator's processes, nginx not counted (through the shim)")
    if isolation:
        lines.append(f"isolation: tokenguard through the shim, alone (baseline), then while a second wrk "
                     f"({HUNG_CONNECTIONS} connections) calls trustguard, a guard that never answers, with "
                     f"\"timeout\": {HUNG_TIMEOUT_S}; its cpu ms/req includes serving those calls")
    if fail_fast:
        lines.append(f"fail-fast: biasguard (nginx answering 500) with its breaker tripped first "
                     f"(AEYON_BREAKER_OPEN={BREAKER_OPEN_S}), {fail_fast.run.connections} connections, no warm-up; "
                     f"{' and '.join(map(str, FAIL_EXPECTED))} answers are expected there, not errors")
    if isolation:
        callers = isolation.callers
        lines.append(f"isolation: one guard hung vs baseline: req/s x{_times(isolation.requests_per_s_ratio)}, "
                     f"p99 x{_times(isolation.p99_ratio)}; the hung guard's callers got {callers.answers()} "
                     f"in {callers.duration_s:g} s ({isolation.calls_held} calls held by the guard)")
        if callers.errors:
            sockets = ", ".join(f"{kind} {count}" for kind, count in callers.socket_errors.items())
            lines.append(f"isolation: the hung guard's callers had {callers.errors} errors (statuses other than "
                         f"{' and '.join(map(str, HUNG_EXPECTED))}, and socket errors: {sockets})")
    if fail_fast:
        lines.append(f"fail-fast: the breaker opened after {fail_fast.trip_requests} requests; answers: "
                     f"{fail_fast.run.answers()}")
    for result in figures.results:
        if result.errors:
            sockets = ", ".join(f"{kind} {count}" for kind, count in result.socket_errors.items())
            by_status = f" ({result.answers(errors_only=True)})" if result.statuses else ""
            lines.append(f"{result.label}: {result.requests} requests, {result.non_2xx} non-2xx answers{by_status}, "
                         f"socket errors: {sockets}")
        elif not result.requests:
            lines.append(f"{result.label}: no request completed")
    return lines


def _open_loop_lines(runs: Sequence[OpenRun]) -> list[str]:
    lines = [f"{'open loop':<27}{'offered':<9}{'answered':<10}{'req/s':<9}{'p50 ms':<9}{'p90 ms':<9}{'p99 ms':<9}"
             f"{'max ms':<9}{'errors':<8}{'cpu ms/req':<12}{'late p99':<10}gen cpu"]
    for run in runs:
        result, share = run.result, run.generator_cpu_share
        lines.append(f"{run.label:<27}{result.offered_rate:<9.0f}{result.answered:<10}{result.achieved_rate:<9.0f}"
                     f"{_ms(result.p50_ms):<9}{_ms(result.p90_ms):<9}{_ms(result.p99_ms):<9}{_ms(result.max_ms):<9}"
                     f"{run.errors:<8}{_ms(run.cpu_ms_per_request):<12}{_ms(result.send_lag_p99_ms):<10}{share:.0%}")
    lines.append("")
    lines.append(f"open loop: requests sent on a fixed schedule over at most {OPEN_CONNECTIONS} keep-alive connections "
                 "(opened as needed), each latency measured from the request's scheduled time, so a request that "
                 "waits for a connection or is sent late counts its wait; late p99: how late requests were written "
                 "(that wait plus the generator's own delay); errors: unexpected statuses, failed connections and "
                 f"requests still unanswered {OPEN_DRAIN_S:g} s after the last scheduled send (counted in the "
                 "percentiles with the time they waited); gen cpu: the load generator's CPU time over the run, in "
                 "share of one core; cpu ms/req as above")
    for run in runs:
        if run.errors or not run.result.answered or run.expected:
            lines.append(f"{run.label}: {run.result.scheduled} scheduled, {run.result.sent} sent, "
                         f"{run.result.answered} answered; {run.answers()}")
    return lines


def _other_lines(settings: Settings, figures: Figures) -> list[str]:
    gw, idle, soak, fail_fast = figures.gateway, figures.idle, figures.soak, figures.fail_fast
    lines = []
    if fail_fast:
        tries = fail_fast.open_trip_requests
        lines.append(f"breaker open, open loop: biasguard's breaker tripped again first ({tries} "
                     f"request{'s' if tries != 1 else ''}); "
                     f"{' and '.join(map(str, FAIL_EXPECTED))} answers are expected there, not errors")
    if gw:
        lines.append(f"Python gateway (bin/gateway_load.py, a process of its own joined to the actor system), "
                     f"{gw.threads} threads, one call after the other: {gw.requests_per_s:,.0f} req/s, p50 "
                     f"{_ms(gw.p50_ms)} ms, p99 {_ms(gw.p99_ms)} ms, max {_ms(gw.max_ms)} ms, {gw.requests} calls, "
                     f"{gw.errors} errors, cpu ms/req {_ms(gw.cpu_ms_per_request)} (the orchestrator's), the "
                     f"client's CPU {gw.client_cpu_s:.2f} s in {gw.elapsed_s:.2f} s")
        if gw.errors:
            lines.append(f"Python gateway: the calls got {', '.join(f'{k} {n}' for k, n in gw.statuses.items())}")
    if idle:
        lines.append(f"memory: an orchestrator with {idle.guards} guards (all routed to nginx), idle "
                     f"{idle.idle_s:g} s after ready: PSS {_mb(idle.pss_kb):.1f} MB over {idle.processes} processes "
                     f"(MB: 10^6 bytes); start to ready {idle.ready_s:.2f} s")
    if figures.ready_s is not None:
        lines.append(f"start to ready: the measured orchestrator (three guards) {figures.ready_s:.2f} s, from "
                     "spawning aeyon serve to the first 200 from GET /ready")
    if soak:
        lines.append(f"soak: through the shim at {soak.rate:,} req/s (half the wrk run's req/s), open loop, "
                     f"{settings.soak_warmup_s} s warm-up then {settings.soak_s} s: PSS {_mb(soak.pss_start_kb):.1f} "
                     f"-> {_mb(soak.pss_end_kb):.1f} MB ({_amount(soak.growth_pct, '%')}); p99 "
                     f"{_ms(soak.run.result.p99_ms)} ms, {soak.run.errors} errors")
        lines.append("soak: most grown (PSS kB, start -> end): " + ", ".join(
            f"{name} {start:,} -> {end:,}" for name, start, end in soak.growers))
    return lines


def _goal_lines(goal_list: Sequence[Goal]) -> list[str]:
    lines = ["goals (issue 6: 2 cores, a fast local guard, keep-alive clients, all features on); a report, not a test",
             f"{'figure':<58}{'measured':<14}{'goal':<16}{'verdict':<14}note"]
    for goal in goal_list:
        lines.append(f"{goal.figure:<58}{_amount(goal.value, goal.unit):<14}{goal.goal:<16}{goal.verdict:<14}"
                     f"{goal.note}")
    return lines


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


# -------------------------------------------------------------------------------------------------------- the bench


def bench(settings: Settings) -> int:
    """Set everything up, run the measurements, print the tables, tear everything down; the exit status."""
    started = datetime.datetime.now(datetime.timezone.utc)
    wrk = ensure_tool("wrk", "wrk")
    nginx = ensure_tool("nginx", "nginx")
    info = {**machine(), "wrk": tool_version([wrk, "-v"], r"wrk (?:[a-z]+/)?(\S+)"),
            "nginx": tool_version([nginx, "-v"], r"nginx/([\w.\-]+)")}
    problems: list[str] = []
    figures = Figures()
    try:
        with tempfile.TemporaryDirectory(prefix="aeyon-bench-") as tmp, contextlib.ExitStack() as stack:
            workdir = Path(tmp)
            guard = stack.enter_context(guard_running(nginx, workdir))
            figures.idle = _attempt(problems, "memory", lambda: measure_idle_memory(guard, workdir, problems))
            urls = {"TOKENGUARD_URL": f"http://127.0.0.1:{guard.port}"}
            hung_guard = None
            if settings.faults:
                hung_guard = stack.enter_context(hung_guard_running(problems))
                urls["TRUSTGUARD_URL"] = f"http://127.0.0.1:{hung_guard.port}"
                urls["BIASGUARD_URL"] = f"http://127.0.0.1:{guard.fail_port}"
            orch = stack.enter_context(orchestrator_running(urls, workdir, problems,
                                                            {"AEYON_BREAKER_OPEN": BREAKER_OPEN_S}))
            figures.ready_s = orch.ready_s
            check_once(guard.port, DIRECT_PATH, DIRECT_BODY, "straight to nginx",
                       lambda answer: isinstance(answer, dict) and answer.get("safe") is True)
            check_once(orch.http_port, SHIM_PATH, SHIM_BODY, "through the shim",
                       lambda answer: isinstance(answer, dict) and answer.get("status") == "success")
            measure_all(wrk, settings, guard, orch, hung_guard, workdir, figures, problems)
            print(report(started, info, settings, figures), flush=True)
            if settings.json_path:
                write_json(settings, started, info, figures)
            if orch.process.poll() is not None:
                problems.append(f"aeyon serve exited with {orch.process.returncode} during the benchmark")
            elif figures.failed():
                print(f"bench: a run had errors; the tail of the serve log:\n{log_tail(orch.log_path)}",
                      file=sys.stderr)
    finally:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
    return 1 if problems or figures.failed() else 0


def measure_all(wrk: str, settings: Settings, guard: Guard, orch: Orchestrator, hung_guard: HungGuard | None,
                workdir: Path, figures: Figures, problems: list[str]) -> None:
    """Every measurement against the running orchestrator, in order, into ``figures``: wrk straight to nginx and
    through the shim (these two must succeed), then open loop, the gateway, the faults (with ``hung_guard``) and
    the soak, each reported in ``problems`` when it cannot be made."""
    figures.results.append(measure(wrk, settings, "direct", "direct to guard (nginx)", guard.port, DIRECT_PATH,
                                   DIRECT_BODY, workdir, guard.pids, "nginx"))
    shim = measure(wrk, settings, "shim", "through the shim", orch.http_port, SHIM_PATH, SHIM_BODY, workdir, orch.pids,
                   SHIM_CPU_OF, expected_statuses=())
    figures.results.append(shim)
    if settings.compare_entry:
        with threaded_entry_running(orch, workdir) as port:
            check_once(port, SHIM_PATH, SHIM_BODY, "through the threaded entry",
                       lambda answer: isinstance(answer, dict) and answer.get("status") == "success")
            figures.results.append(measure(wrk, settings, "threaded", "threaded entry+gateway", port, SHIM_PATH,
                                           SHIM_BODY, workdir, orch.pids,
                                           "the threaded entry and the orchestrator's processes",
                                           expected_statuses=()))
    figures.open_runs.extend(measure_latencies(settings, guard, orch))
    figures.gateway = _attempt(problems, "Python gateway", lambda: measure_gateway(settings, orch, workdir))
    if hung_guard is not None:
        isolation = _attempt(problems, "isolation", lambda: measure_isolation(wrk, settings, orch, hung_guard,
                                                                              workdir))
        if isolation:
            figures.isolation = isolation
            figures.results.extend((isolation.baseline, isolation.hung))
        open_isolation = _attempt(problems, "isolation at a fixed rate",
                                  lambda: measure_open_isolation(settings, orch, hung_guard))
        if open_isolation:
            figures.open_isolation = open_isolation
            figures.open_runs.extend((open_isolation.baseline, open_isolation.hung))
        fail_fast = _attempt(problems, "fail-fast", lambda: measure_fail_fast(wrk, settings, orch, workdir))
        if fail_fast:
            figures.fail_fast = fail_fast
            figures.results.append(fail_fast.run)
            figures.open_runs.append(fail_fast.open_run)
    if settings.soak_s:
        soak = _attempt(problems, "soak", lambda: measure_soak(settings, orch, shim.requests_per_s))
        if soak:
            figures.soak = soak
            figures.open_runs.extend((soak.warmup, soak.run))


T = TypeVar("T")


def _attempt(problems: list[str], what: str, measurement: Callable[[], T]) -> T | None:
    """``measurement()``, or None when it raises BenchError, whose message goes to ``problems`` after ``what``: a
    measurement that cannot be made is reported after the tables of what was."""
    try:
        return measurement()
    except BenchError as exc:
        problems.append(f"{what}: {str(exc).removeprefix('bench: ')}")
        return None


def write_json(settings: Settings, started: datetime.datetime, info: Mapping[str, Any], figures: Figures) -> None:
    """Write the figures as JSON to ``settings.json_path``."""
    assert settings.json_path is not None
    document: dict[str, Any] = {
        "timestamp": started.isoformat(timespec="seconds"),
        "machine": dict(info),
        "command": settings.command(),
        "settings": {"duration_s": settings.duration_s, "connections": settings.connections,
                     "threads": settings.threads, "warmup_s": settings.warmup_s, "smoke": settings.smoke,
                     "faults": settings.faults, "wrk_request_timeout": WRK_REQUEST_TIMEOUT,
                     "open_duration_s": settings.open_duration_s, "rate_low": settings.rate_low,
                     "rate_high": settings.rate_high, "open_connections": OPEN_CONNECTIONS,
                     "open_drain_s": OPEN_DRAIN_S, "gateway_threads": GATEWAY_THREADS, "soak_s": settings.soak_s,
                     "soak_warmup_s": settings.soak_warmup_s},
        "runs": [result.as_json() for result in figures.results],
        "open_loop": [run.as_json() for run in figures.open_runs],
        "start_to_ready_s": {"six_guards": figures.idle.ready_s if figures.idle else None,
                             "three_guards": figures.ready_s},
        "goals": [goal.as_json() for goal in goals(settings, figures)],
    }
    if figures.isolation:
        document["isolation"] = figures.isolation.as_json()
    if figures.fail_fast:
        document["fail_fast"] = figures.fail_fast.as_json()
    if figures.gateway:
        document["gateway"] = figures.gateway.as_json()
    if figures.idle:
        document["idle_memory"] = figures.idle.as_json()
    if figures.soak:
        document["soak"] = figures.soak.as_json()
    settings.json_path.write_text(json.dumps(document, indent=2) + "\n")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``bin/bench [--smoke] [--duration S] [--connections N] [--threads N] [--json PATH]
    [--compare-entry] [--no-faults]``."""
    settings = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if settings.nodes:
            import scale

            return scale.run(sys.argv[1:] if argv is None else argv, settings, settings.nodes, settings.cores,
                             settings.shims)
        return bench(settings)
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(exc, file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("bench: interrupted; stopped everything it started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
