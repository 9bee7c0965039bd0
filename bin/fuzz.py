"""Fuzz the HTTP shim: thousands of generated requests against a real ``aeyon serve``, each answer checked against
the contract.

Run it as ``bin/fuzz`` (which prepares the project's virtual environment with the ``fuzz`` extra first). It

1. starts six small guards on free loopback ports (a threaded standard-library JSON echo server each: ``GET
   /health`` is 200, a ``POST`` answers ``{"echo": <the body as sent>, "path": ...}``; a payload's ``"fuzz_guard"``
   key can ask for another status, invalid JSON, ``NaN``, a slow answer or a dropped connection, so the guard
   failure paths are driven too; a body that is not strict JSON is answered 400 and remembered);
2. starts ``aeyon serve`` routing the six guard types to them, with ``biasguard`` fail-open (the degraded answer),
   ``AEYON_ADMIN_TOKEN`` and ``SECURITY_SECRET_KEY`` set (the fuzzer signs most orchestrate requests and knows
   the token, so signed and unsigned, authorized and unauthorized requests all occur), ``SECURITY_ALLOWED_IPS`` with
   ``AEYON_TRUSTED_PROXIES=127.0.0.1/32`` (so a fuzzed ``X-Forwarded-For`` is believed and the allowlist refuses
   some), ``SECURITY_MAX_REQUESTS_PER_MINUTE`` at its maximum, and short HTTP timeouts (head 2 s, body 3 s, idle
   5 s) so that stalled connections are answered within seconds;
3. generates the cases (``--cases``, default 10,000, split about 30 % schema-valid, 20 % schema-invalid, 30 %
   mutations, 20 % raw):

   * *schema*: schemathesis draws requests for every operation of ``system/openapi.json`` (positive: valid per the
     document; negative: violating it); orchestrate requests are mostly pointed at a configured guard and signed,
     admin requests get the real token, a wrong one or none;
   * *mutation*: a few fixed edge cases (bodies of exactly and just over 10 MiB, numbers and constants that
     Python's ``json`` takes but JSON does not have, ``NaN`` from a guard, a 100,000-deep payload), then hypothesis
     strategies written here: wrong types and missing fields, bad ``request_id`` and ``timeout`` values, payloads
     too deep, with NUL or over-long keys, huge, wide or odd-unicode ones, bodies that are not JSON objects, bad
     signatures and replays, odd headers, guard failures, random methods and paths, registrations and removals
     with and without the token;
   * *raw*: byte streams over plain sockets: garbage, truncated heads, bad ``Content-Length``, bad chunked
     encoding, huge heads, odd framing (bare LF, obs-fold, HTTP/1.0, HTTP/0.9, HTTP/2's preface, CONNECT, ...),
     pipelined mixes of valid and invalid requests, ``Expect: 100-continue``, early closes, and stalled
     connections (run in the background while the rest goes on);

4. sends every case and checks every answer (below); every 250 cases, and at the end, ``GET /health`` must be 200
   and the serve process alive; a service a case registered is removed again at once;
5. prints a summary: cases per kind, requests sent, statuses and error codes seen, and each distinct failure with
   the request that reproduces it (the bytes sent, and what came back); ``--json PATH`` writes it all as JSON;
6. always stops the orchestrator (``aeyon stop``, then kills whatever still carries this run's tag) and the guards,
   and removes its temporary directory, also on Ctrl-C, SIGTERM or an error.

The checks, on every answer: no 500 and no 5xx but 502, 503 and 504; an ``X-Request-ID`` header (1-100 characters
of ``A-Z a-z 0-9 _ -``); every JSON body strict JSON (RFC 8259: no ``NaN``, no ``Infinity``); every 4xx/5xx body
(but ``/ready``'s 503) is the error envelope ``{request_id, service, status: "error", error: {code, message,
detail?}}`` with a code from the contract's table or README's additions (``not_found``, ``method_not_allowed``,
``conflict``, ``request_timeout``, ``request_header_too_large``), the status that code has (``guard_rejected``: a
4xx), the body's ``request_id`` equal to the header, ``Retry-After`` with the codes that promise it and ``Allow``
with 405; a 2xx from ``/v1/orchestrate`` is the success envelope (or its degraded form); no request is left
without an answer, or its connection without a close, past a deadline; pipelined answers come in order, and no
answer comes unasked; a guard is never sent a body that is not JSON.
Schema cases are also checked against the document's responses (schemathesis's status code, content type, header
and body conformance checks). Requests cut short by the client's half-close are counted, not failed: the shim
takes a half-close as the client leaving, as a proxy's 499 does.

Exit status: 0 when every case passed; 1 when any failed (the summary is printed first); 2 when the fuzzer could
not run (a missing library, the orchestrator not starting); 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import http.client
import http.server
import io
import json
import random
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bin"))

# The process plumbing shared with the benchmark (free ports, the run's tag, stopping cleanly).
from bench import (  # noqa: E402 - bin/bench.py, next to this file
    TAG_VAR,
    clean_env,
    die_with_parent,
    free_port,
    kill_leftovers,
    log_tail,
    signals_deferred,
    tagged_pids,
    wait_for,
)

from system.signing import Signer  # noqa: E402 - after the path is set

GUARD_TYPES = ("tokenguard", "trustguard", "contextguard", "biasguard", "healthguard", "securityguard")
FAIL_OPEN_GUARD = "biasguard"
MAX_RATE_LIMIT = "10000000"  # SECURITY_MAX_REQUESTS_PER_MINUTE's largest accepted value
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 5.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CASE_DEADLINE_S = 15.0  # an answer (or a close) must come within this, else the case hung
STALL_DEADLINE_S = 12.0  # a stalled connection must be answered 408 or closed within this
LIVENESS_EVERY = 250
SMOKE_CASES = 300
MAX_BODY = 10 * 1024 * 1024
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")

# The contract's error codes and statuses (shared/CONTRACT.md), and README's additions for routes and HTTP errors.
CONTRACT_STATUS = {
    "invalid_request": 400, "invalid_payload": 400, "unauthorized": 401, "forbidden": 403, "unknown_service": 404,
    "payload_too_large": 413, "rate_limited": 429, "upstream_error": 502, "circuit_open": 503,
    "service_unavailable": 503, "overloaded": 503, "upstream_timeout": 504, "internal_error": 500,
}
README_STATUS = {"not_found": 404, "method_not_allowed": 405, "conflict": 409, "request_timeout": 408,
                 "request_header_too_large": 431}
CODE_STATUS = {**CONTRACT_STATUS, **README_STATUS}
ERROR_CODES = frozenset(CODE_STATUS) | {"guard_rejected"}
RETRY_AFTER_CODES = frozenset({"rate_limited", "circuit_open", "overloaded", "service_unavailable"})
DEGRADABLE_CODES = frozenset({"upstream_error", "upstream_timeout", "circuit_open", "service_unavailable"})
ALLOWED_5XX = frozenset({502, 503, 504})

KINDS = ("schema-positive", "schema-negative", "mutation", "raw")


class FuzzError(Exception):
    """The fuzzer could not run (exit status 2)."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind through the clean-ups like Ctrl-C."""


# ---------------------------------------------------------------------------------------------------------- guards


def strict_json(raw: bytes | str) -> Any:
    """Decode JSON as RFC 8259 has it: ``NaN`` and ``Infinity`` are not JSON (Python's decoder takes them)."""
    return json.loads(raw, parse_constant=_not_json_constant)


def _not_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _GuardHandler(http.server.BaseHTTPRequestHandler):
    """A guard: ``GET /health`` 200; ``POST`` echoes its JSON body, or obeys the payload's ``fuzz_guard``. A body
    that is not JSON is answered 400, as a strict guard would, and kept: the shim must only ever send JSON."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: GuardServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, b'{"status":"ok"}')
        else:
            self._answer(404, b'{"error":"not found"}')

    def do_POST(self) -> None:
        self.server.calls += 1
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = strict_json(raw)
        except (ValueError, RecursionError) as exc:
            self.server.not_json.append(f"{exc}: {_short(raw, 300)}")
            self._answer(400, b'{"error":"guard: body is not JSON"}')
            return
        directive = body.get("fuzz_guard") if isinstance(body, dict) else None
        if isinstance(directive, str):
            verb, _, arg = directive.partition(":")
            if verb == "status" and arg.isdigit() and 200 <= int(arg) <= 599:
                status = int(arg)
                self._answer(status, b"" if status in (204, 304) else json.dumps({"verdict": status}).encode())
                return
            if verb == "badjson":
                self._answer(200, b"{not json", "text/plain")
                return
            if verb in ("nan", "infinity"):  # Python's decoder takes these; they are not JSON
                status = int(arg) if arg.isdigit() and 200 <= int(arg) <= 599 else 200
                self._answer(status, b'{"score": NaN}' if verb == "nan" else b'{"score": -Infinity}')
                return
            if verb == "close":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if verb == "sleep":
                with contextlib.suppress(ValueError):
                    time.sleep(min(3.0, max(0.0, float(arg))))
        # The body as it came (not decoded and encoded again: a number too large for a float stays as sent).
        meta = json.dumps({"path": self.path, "request_id": self.headers.get("X-Request-ID")}).encode()
        self._answer(200, b'{"echo":' + raw + b"," + meta[1:])


class GuardServer(http.server.ThreadingHTTPServer):
    """One guard on a free loopback port, served from a thread of its own."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _GuardHandler)
        self.calls = 0
        self.not_json: list[str] = []  # bodies the shim sent that were not JSON
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about connections the orchestrator closed (a request past its deadline); loud about the rest."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def start(self) -> GuardServer:
        """Serve until ``stop()``."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@contextlib.contextmanager
def guards_running(names: Sequence[str]) -> Iterator[dict[str, GuardServer]]:
    """One guard per name, always stopped."""
    guards: dict[str, GuardServer] = {}
    try:
        for name in names:
            guards[name] = GuardServer().start()
        yield guards
    finally:
        with signals_deferred():
            for guard in guards.values():
                guard.stop()


# ---------------------------------------------------------------------------------------------- the orchestrator


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A plain GET on loopback: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Orchestrator:
    """A running ``aeyon serve``."""

    process: subprocess.Popen[bytes]
    http_port: int
    admin_port: int
    tag: str
    env: dict[str, str]
    log_path: Path

    def alive(self) -> bool:
        """The serve process has not exited."""
        return self.process.poll() is None

    def ready(self) -> bool:
        """``GET /ready`` answers 200 (raises if serve exited)."""
        if not self.alive():
            raise FuzzError(f"aeyon serve exited with {self.process.returncode}; its log:\n{log_tail(self.log_path)}")
        try:
            return http_get(self.http_port, "/ready", 1.0)[0] == 200
        except (OSError, http.client.HTTPException):
            return False


@contextlib.contextmanager
def orchestrator_running(settings: Mapping[str, str], workdir: Path, problems: list[str]) -> Iterator[Orchestrator]:
    """Start ``aeyon serve`` with ``settings`` on free ports, wait for ``GET /ready``, and always stop it; what goes
    wrong while stopping is appended to ``problems``."""
    http_port, admin_port, tag = free_port(), free_port(), uuid.uuid4().hex
    env = clean_env({"AEYON_LOG_LEVEL": "WARNING", **settings, "AEYON_PORT": str(http_port),
                     "AEYON_ADMIN_PORT": str(admin_port), TAG_VAR: tag})
    log_path = workdir / "serve.log"
    libc = ctypes.CDLL(None, use_errno=True)
    with open(log_path, "wb") as log:
        # Its own session: a terminal's Ctrl-C reaches only us, and we stop it in order.
        process = subprocess.Popen([sys.executable, "-m", "system.cli", "serve"], env=env, cwd=ROOT,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=functools.partial(die_with_parent, libc))
    orch = Orchestrator(process, http_port, admin_port, tag, env, log_path)
    try:
        if not wait_for(orch.ready, START_TIMEOUT_S):
            raise FuzzError(f"aeyon serve was not ready within {START_TIMEOUT_S:g} s; its log:\n{log_tail(log_path)}")
        yield orch
    finally:
        with signals_deferred():
            problems.extend(stop_orchestrator(orch))


def stop_orchestrator(orch: Orchestrator) -> list[str]:
    """``aeyon stop``, wait for serve to exit, then kill whatever still carries the tag; the problems seen."""
    problems = []
    if orch.alive():
        try:
            done = subprocess.run([sys.executable, "-m", "system.cli", "stop", "--admin-port", str(orch.admin_port)],
                                  env=orch.env, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=STOP_TIMEOUT_S + 5, check=False)
            if done.returncode != 0:
                problems.append(f"aeyon stop exited with {done.returncode}: {done.stderr.strip()}")
        except subprocess.TimeoutExpired:
            problems.append(f"aeyon stop did not return within {STOP_TIMEOUT_S + 5:g} s")
        if problems and orch.alive():
            orch.process.terminate()
    try:
        code = orch.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        problems.append(f"aeyon serve did not exit within {STOP_TIMEOUT_S:g} s after the stop: killed it")
        orch.process.kill()
        code = orch.process.wait()
    if code != 0 and not problems:
        problems.append(f"aeyon serve exited with {code}")
    problems.extend(kill_leftovers(lambda: tagged_pids(orch.tag), "aeyon serve"))
    if problems:
        problems.append(f"the tail of the serve log:\n{log_tail(orch.log_path)}")
    return problems


# ------------------------------------------------------------------------------------------------------- the wire


@dataclass
class Answer:
    """One HTTP response as received (or why none was)."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    elapsed: float = 0.0
    error: str | None = None  # no (parseable) answer: why
    closed: bool = False  # the connection was closed cleanly before any byte of an answer
    stream: bool = False  # an endless event stream: its head was read, then the client closes

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        lower = name.lower()
        return next((v for n, v in self.headers if n.lower() == lower), None)

    def describe(self) -> str:
        """What came back, short."""
        if self.error:
            return self.error
        head = " ".join(f"{n}: {v}" for n, v in self.headers if n.lower() in ("x-request-id", "content-type",
                                                                                  "retry-after", "allow"))
        return f"{self.status} [{head}] {_short(self.body, 300)}"


class _Reader:
    """Lets successive ``http.client.HTTPResponse`` objects read one buffered stream (pipelined answers): each
    gets a view of it that it may close without closing the stream."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self._stream = stream

    def makefile(self, mode: str) -> _Unclosed:
        return _Unclosed(self._stream)


class _Unclosed:
    """A stream whose ``close()`` does nothing (the connection's stream outlives each response)."""

    def __init__(self, stream: io.BufferedReader) -> None:
        self._stream = stream

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def close(self) -> None:
        pass


def read_answer(stream: io.BufferedReader, method: str, started: float) -> Answer:
    """Parse one response from ``stream``."""
    response = http.client.HTTPResponse(_Reader(stream), method=method)  # type: ignore[arg-type]
    try:
        response.begin()
        if (response.getheader("Content-Type") or "").startswith("text/event-stream"):
            return Answer(response.status, list(response.getheaders()), b"", time.monotonic() - started, stream=True)
        body = response.read()
    except http.client.RemoteDisconnected:
        return Answer(error="connection closed without an answer", closed=True, elapsed=time.monotonic() - started)
    except TimeoutError:
        return Answer(error="no answer before the deadline (hang)", elapsed=time.monotonic() - started)
    except (ConnectionResetError, BrokenPipeError):
        return Answer(error="connection reset without an answer", closed=True, elapsed=time.monotonic() - started)
    except (http.client.HTTPException, OSError, ValueError) as exc:
        return Answer(error=f"unparseable answer: {type(exc).__name__}: {exc}", elapsed=time.monotonic() - started)
    return Answer(response.status, list(response.getheaders()), body, time.monotonic() - started)


def encode_request(method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes | None,
                   host: str) -> bytes:
    """The request's bytes: headers as given (text as Latin-1 where it can be, else UTF-8), Content-Length added
    when there is a body and none was given."""

    def enc(text: str) -> bytes:
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            return text.encode("utf-8", "surrogatepass")

    lines = [enc(f"{method} {target} HTTP/1.1")]
    names = {n.lower() for n, _ in headers}
    if "host" not in names:
        lines.append(b"Host: " + host.encode())
    for name, value in headers:
        lines.append(enc(name) + b": " + enc(value))
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


class Client:
    """One keep-alive connection to the shim, reopened when the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self._sock: socket.socket | None = None
        self._stream: io.BufferedReader | None = None
        self.requests = 0
        self.unsolicited = b""  # what the server had sent on the connection before the last request
        self.before: bytes | None = None  # the request before the last one on its connection (None: it was fresh)
        self._last: bytes | None = None

    def close(self) -> None:
        """Close the connection (a new one opens on the next request)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = self._stream = None
        self._last = None

    def _connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=CASE_DEADLINE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._stream = sock.makefile("rb")

    def send(self, data: bytes, method: str, deadline: float = CASE_DEADLINE_S) -> Answer:
        """Send one request's bytes and read its answer. A kept-alive connection the server has closed meanwhile
        (idle) is replaced before sending, so that a close after sending is always the server's answer to this
        request; bytes waiting on a connection before a request was sent are reported (``unsolicited``)."""
        self.unsolicited = b""
        if self._sock is not None:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if readable:
                with contextlib.suppress(OSError):
                    self.unsolicited = self._sock.recv(512, socket.MSG_PEEK)
                self.close()
        if self._sock is None:
            self._connect()
        assert self._sock is not None and self._stream is not None
        self.before, self._last = self._last, data
        self._sock.settimeout(deadline)
        self.requests += 1
        started = time.monotonic()
        answered_early = False
        with contextlib.suppress(OSError):  # the server may close before taking it all: its answer is still read
            answered_early = _send_watching(self._sock, data)
        answer = read_answer(self._stream, method, started)
        if answer.error or answer.stream or answered_early or _will_close(answer):
            self.close()
        return answer


def _will_close(answer: Answer) -> bool:
    return (answer.header("Connection") or "").lower() == "close"


def _send_watching(sock: socket.socket, data: bytes) -> bool:
    """Send ``data``; a large body stops early when the server answers first (413 before the body). True then."""
    if len(data) <= 1 << 20:
        sock.sendall(data)
        return False
    view = memoryview(data)
    deadline = time.monotonic() + CASE_DEADLINE_S
    while view:
        readable, writable, _ = select.select([sock], [sock], [], max(0.0, deadline - time.monotonic()))
        if readable:
            return True
        if not writable:
            raise TimeoutError("the server stopped reading the body")
        sent = sock.send(view[:1 << 16])
        view = view[sent:]
    return False


def _short(data: bytes | str, limit: int = 600) -> str:
    text = repr(data)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(data)} bytes)"


# ---------------------------------------------------------------------------------------------------- the checks


def check_answer(answer: Answer, method: str | None, path: str | None) -> list[str]:
    """What is wrong with an answer, per the contract and README (empty when nothing). ``method`` and ``path`` are
    those of the request when it was well-formed enough to have them."""
    if answer.error:
        return [answer.error]
    problems = []
    status = answer.status
    if status == 500:
        problems.append("status 500")
    elif status >= 500 and status not in ALLOWED_5XX:
        problems.append(f"status {status} (5xx other than 502/503/504)")
    elif status < 100 or status > 599:
        problems.append(f"status {status} out of range")
    request_id = answer.header("X-Request-ID")
    if request_id is None:
        problems.append("no X-Request-ID header")
    elif not REQUEST_ID.fullmatch(request_id):
        problems.append(f"X-Request-ID {request_id!r} is not 1-100 of A-Z a-z 0-9 _ -")
    head = method == "HEAD"
    if status >= 400 and not head:
        if path == "/ready" and status == 503:
            body = _json(answer.body)
            if not (isinstance(body, dict) and body.get("status") in ("starting", "draining")):
                problems.append(f"/ready 503 body is not {{\"status\": \"starting\"|\"draining\"}}: "
                                f"{_short(answer.body, 200)}")
        else:
            problems.extend(_check_error_envelope(answer, request_id))
    elif 200 <= status < 300 and not head and method is not None and path is not None:
        problems.extend(_check_success(answer, method, path, request_id))
    return problems


def _json(raw: bytes) -> Any:
    try:
        return strict_json(raw)
    except (ValueError, RecursionError):
        return _NOT_JSON


_NOT_JSON = object()


def _check_error_envelope(answer: Answer, request_id: str | None) -> list[str]:
    body = _json(answer.body)
    if not isinstance(body, dict):
        return ["error body is not a JSON object (RFC 8259)"]
    problems = []
    extra = set(body) - {"request_id", "service", "status", "error"}
    if extra:
        problems.append(f"error envelope has unexpected keys {sorted(extra)}")
    if not isinstance(body.get("request_id"), str):
        problems.append("error envelope's request_id is missing or not a string")
    elif request_id is not None and body["request_id"] != request_id:
        problems.append(f"error envelope's request_id {body['request_id']!r} is not the X-Request-ID {request_id!r}")
    if "service" not in body or not (body["service"] is None or isinstance(body["service"], str)):
        problems.append("error envelope's service is missing or not a string/null")
    if body.get("status") != "error":
        problems.append(f"error envelope's status is {body.get('status')!r}, not 'error'")
    error = body.get("error")
    if not isinstance(error, dict):
        return [*problems, "error envelope has no error object"]
    extra = set(error) - {"code", "message", "detail"}
    if extra:
        problems.append(f"error object has unexpected keys {sorted(extra)}")
    if not isinstance(error.get("message"), str):
        problems.append("error.message is missing or not a string")
    code = error.get("code")
    if code not in ERROR_CODES:
        problems.append(f"error.code {code!r} is not in the contract's table")
        return problems
    status = answer.status
    if code == "guard_rejected":
        if not 400 <= status < 500:
            problems.append(f"guard_rejected with status {status} (must be the guard's 4xx)")
    elif CODE_STATUS[code] != status:
        problems.append(f"error.code {code} with status {status} (the contract says {CODE_STATUS[code]})")
    if code in RETRY_AFTER_CODES:
        retry_after = answer.header("Retry-After")
        if retry_after is None or not retry_after.isdigit() or int(retry_after) < 1:
            problems.append(f"{code} without a Retry-After of whole seconds >= 1 (got {retry_after!r})")
    if status == 405 and not answer.header("Allow"):
        problems.append("405 without an Allow header")
    return problems


def _check_success(answer: Answer, method: str, path: str, request_id: str | None) -> list[str]:
    if path == "/v1/orchestrate" and method == "POST":
        if answer.status != 200:
            return [f"orchestrate answered {answer.status} (only 200 is a success)"]
        body = _json(answer.body)
        if not isinstance(body, dict):
            return ["success body is not a JSON object (RFC 8259)"]
        problems = []
        if body.get("status") != "success":
            problems.append(f"success envelope's status is {body.get('status')!r}")
        if body.get("request_id") != request_id:
            problems.append(f"success envelope's request_id {body.get('request_id')!r} is not the X-Request-ID")
        if not isinstance(body.get("service"), str):
            problems.append("success envelope has no service")
        if not isinstance(body.get("duration_ms"), int | float) or body["duration_ms"] < 0:
            problems.append("success envelope has no duration_ms >= 0")
        if "result" not in body:
            problems.append("success envelope has no result")
        if body.get("degraded"):
            reason = body.get("degraded_reason")
            if body.get("result") is not None:
                problems.append("degraded answer with a non-null result")
            if not isinstance(reason, dict) or reason.get("code") not in DEGRADABLE_CODES \
                    or not isinstance(reason.get("message"), str):
                problems.append(f"degraded answer with a bad degraded_reason: {reason!r}")
        return problems
    if path == "/v1/services" and method == "POST":
        body = _json(answer.body)
        if answer.status != 201 or not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return [f"registration answered {answer.status} {_short(answer.body, 200)}"]
        if answer.header("Location") != f"/v1/services/{body['name']}":
            return [f"registration's Location is {answer.header('Location')!r}"]
        return []
    if method == "DELETE" and path.startswith("/v1/services/"):
        return [] if answer.status == 204 and not answer.body else [f"removal answered {answer.status}"]
    expected: dict[str, Callable[[Any], bool]] = {
        "/health": lambda b: b == {"status": "ok"},
        "/ready": lambda b: b == {"status": "ready"},
        "/v1/services": lambda b: isinstance(b, dict) and isinstance(b.get("services"), list),
        "/v1/actors": lambda b: isinstance(b, dict) and "children" in b,
        "/openapi.json": lambda b: isinstance(b, dict) and b.get("openapi") == "3.0.3",
    }
    check = expected.get(path)
    if check is not None and method == "GET" and not check(_json(answer.body)):
        return [f"GET {path} answered {answer.status} {_short(answer.body, 200)}"]
    return []


# ------------------------------------------------------------------------------------------------------- the cases


@dataclass
class HttpCase:
    """One well-framed request (its head and body may still be anything)."""

    kind: str
    name: str
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes | None = None
    repeat: int = 1  # sent this many times (a replay)
    schema_case: Any = None  # the schemathesis case, for the conformance checks

    @property
    def path(self) -> str:
        """The target's path, as the server decodes it."""
        from urllib.parse import unquote

        return unquote(self.target.partition("?")[0].partition("#")[0])


@dataclass
class RawCase:
    """Bytes over a socket of its own, then: ``read`` (wait for ``answers`` answers), ``shut`` (half-close and read
    until the server closes), ``close`` (close at once, read nothing) or ``stall`` (send nothing more and wait for
    the server to answer 408 or close)."""

    kind: str
    name: str
    chunks: list[bytes]
    after: str
    methods: list[str] = field(default_factory=list)  # the request methods, in order, for the answers' framing
    paths: list[str | None] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # X-Request-IDs the well-formed requests' answers must carry
    answers: int = 0  # at least this many answers must come (the well-formed requests before any malformed one)
    deadline: float = CASE_DEADLINE_S
    expect_continue: bool = False
    wait_first: float = 0.0  # pause between the chunks
    malformed_last: bool = False  # the last request is malformed: its answer must be a 400 or 431


@dataclass
class Context:
    """What the case builders need to know about the orchestrator under test."""

    port: int
    token: str
    signer: Signer
    guards: tuple[str, ...]
    guard_url: str
    rng: random.Random
    stamps: int = 0

    @property
    def host(self) -> str:
        """The Host header value."""
        return f"127.0.0.1:{self.port}"

    def signed(self, body: bytes) -> list[tuple[str, str]]:
        """The signing headers for ``body``. The timestamp steps back through the last 200 seconds, so that the
        same body sent twice within a second is not refused as a replay (generators repeat small bodies)."""
        self.stamps += 1
        return list(self.signer.headers(body, int(time.time()) - self.stamps % 200).items())


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _quote(text: str, safe: str = "") -> str:
    """Percent-encode any text (lone surrogates too, as the bytes Python would write for them)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe=safe)


def _unique_id(prefix: str = "fz") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# -- schema cases (schemathesis) -----------------------------------------------------------------------------------


def schema_cases(ctx: Context, mode_name: str, budget: int, seed: int) -> list[HttpCase]:
    """``budget`` requests drawn by schemathesis from system/openapi.json, spread over the operations."""
    from schemathesis import GenerationMode, openapi
    from schemathesis.core.result import Ok

    mode = GenerationMode.POSITIVE if mode_name == "positive" else GenerationMode.NEGATIVE
    document = json.loads((ROOT / "system" / "openapi.json").read_text())
    schema = openapi.from_dict(document)
    operations: dict[str, Any] = {}
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise FuzzError(f"system/openapi.json has an operation schemathesis cannot use: {result.err()}")
        operations[result.ok().label] = result.ok()
    weights = {"POST /v1/orchestrate": 60, "POST /v1/services": 20, "DELETE /v1/services/{name}": 12,
               "GET /v1/events": 3}
    simple = [label for label in operations if label not in weights]
    cases: list[HttpCase] = []
    # Operations without parameters have one positive request and no negative one: a few each.
    if mode is GenerationMode.POSITIVE:
        for label in simple:
            cases.extend(_draw_schema(ctx, operations[label], mode, 2, seed, mode_name))
    rest = max(0, budget - len(cases))
    total = sum(weights.values())
    for label, weight in weights.items():
        share = rest * weight // total if label != "POST /v1/orchestrate" else 0
        cases.extend(_draw_schema(ctx, operations[label], mode, share, seed, mode_name))
    cases.extend(_draw_schema(ctx, operations["POST /v1/orchestrate"], mode, budget - len(cases), seed, mode_name))
    return cases[:budget]


def _draw_schema(ctx: Context, operation: Any, mode: Any, count: int, seed: int, mode_name: str) -> list[HttpCase]:
    strategy = operation.as_strategy(generation_mode=mode)
    drawn = draw_examples(strategy, count, seed ^ zlib.crc32(operation.label.encode()))
    return [_from_schema_case(ctx, case, f"schema-{mode_name}") for case in drawn]


def draw_examples(strategy: Any, count: int, seed: int) -> list[Any]:
    """``count`` examples of a hypothesis strategy (fewer when it has no more distinct ones)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis.errors import Unsatisfiable

    out: list[Any] = []
    stalled = 0
    round_ = 0
    while len(out) < count and stalled < 3:
        before = len(out)

        @hypothesis_seed(seed + round_)
        @settings(max_examples=min(count - len(out), 2000), phases=[Phase.generate], database=None, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(example: Any) -> None:
            if len(out) < count:
                out.append(example)

        with contextlib.suppress(Unsatisfiable):
            collect()
        round_ += 1
        stalled = stalled + 1 if len(out) - before < 2 else 0
    return out


def _from_schema_case(ctx: Context, case: Any, kind: str) -> HttpCase:
    kwargs = case.as_transport_kwargs(base_url=f"http://{ctx.host}")
    method = kwargs["method"].upper()
    target = kwargs["url"][len(f"http://{ctx.host}"):] or "/"
    target += _query(kwargs.get("params"))
    headers = [(str(k), str(v)) for k, v in (kwargs.get("headers") or {}).items()
               if k.lower() not in ("user-agent", "accept-encoding", "connection", "x-schemathesis-testcaseid")]
    body: bytes | None = None
    if "json" in kwargs:
        value = kwargs["json"]
        if isinstance(value, dict) and method == "POST" and case.operation.path == "/v1/orchestrate" \
                and isinstance(value.get("service"), str) and ctx.rng.random() < 0.6:
            value = {**value, "service": ctx.rng.choice(ctx.guards)}
        body = _dumps(value)
    elif "data" in kwargs and kwargs["data"] is not None:
        data = kwargs["data"]
        body = data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogatepass")
    if case.operation.path == "/v1/orchestrate" and body is not None and ctx.rng.random() < 0.85:
        headers = [(k, v) for k, v in headers if k.lower() not in ("x-aeyon-timestamp", "x-aeyon-signature")]
        headers += ctx.signed(body)
    if method in ("POST", "DELETE") and case.operation.path.startswith("/v1/services"):
        headers = _auth_variant(ctx, headers, case.operation.path, target)
    headers = [(k.replace("\r", "").replace("\n", ""), v.replace("\r", "").replace("\n", "")) for k, v in headers]
    return HttpCase(kind, case.operation.label, method, target, headers, body, schema_case=case)


def _query(params: Any) -> str:
    if not params:
        return ""
    if isinstance(params, str | bytes):
        return "?" + (params.decode("latin-1") if isinstance(params, bytes) else params)
    pairs = []
    for key, value in (params.items() if isinstance(params, Mapping) else params):
        for one in value if isinstance(value, list | tuple) else [value]:
            pairs.append(f"{_quote(str(key))}={_quote(str(one))}")
    return "?" + "&".join(pairs)


def _auth_variant(ctx: Context, headers: list[tuple[str, str]], path: str, target: str) -> list[tuple[str, str]]:
    pick = ctx.rng.random()
    headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
    if pick < 0.5:
        removing_guard = path.endswith("{name}") and target.rsplit("/", 1)[-1] in ctx.guards
        # The configured guards stay: removing one would starve the rest of the run.
        headers.append(("Authorization", "Bearer wrong-token" if removing_guard else f"Bearer {ctx.token}"))
    elif pick < 0.75:
        headers.append(("Authorization", "Bearer " + secrets.token_hex(8)))
    return headers


# -- mutation cases (hypothesis) -----------------------------------------------------------------------------------

ODD_STRINGS = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "\u202e", "\ufeff", "\u0000" * 10, "\U0001f600" * 50,
    "\U0001d54f" * 1000, "A" * 101, "A" * 100, "a" * 65, "../../etc/passwd", "<script>alert(1)</script>",
    "' OR 1=1 --", "${jndi:ldap://x/a}", "%s%n%x", "\r\n", "null", "NaN", "1e999", "\t", "é", "\xff",
    "tokenguard\x00", "tokenguard ", "TOKENGUARD", "tokenguard/../trustguard",
    "\uff54\uff4f\uff4b\uff45\uff4e\uff47\uff55\uff41\uff52\uff44",  # "tokenguard" in fullwidth letters
]
ODD_NUMBERS = [0, -1, 0.0, -0.0, 300, 300.0000001, 301, 1e-300, 5e-324, 1e308, -1e308, 2**63, 10**400, 0.001]


def mutation_strategy(ctx: Context) -> Any:
    """A hypothesis strategy of ``HttpCase`` mutations."""
    from hypothesis import strategies as st

    text = st.one_of(st.text(max_size=40), st.sampled_from(ODD_STRINGS),
                     st.text(alphabet=st.characters(codec=None, categories=None), max_size=20))
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(text, inner, max_size=4), max_leaves=12)
    payloads = st.dictionaries(text, values, max_size=5)
    services = st.one_of(st.sampled_from(ctx.guards), st.sampled_from(ctx.guards), text)
    return st.one_of(
        _orchestrate_mutation(ctx, st, text, values, payloads, services),
        _method_path_mutation(ctx, st, text),
        _header_mutation(ctx, st, text, payloads),
        _admin_mutation(ctx, st, text, values),
    )


def _orchestrate_mutation(ctx: Context, st: Any, text: Any, values: Any, payloads: Any, services: Any) -> Any:
    mutators = ["valid", "service_type", "service_text", "payload_type", "request_id", "timeout", "missing",
                "extra", "deep", "nul_key", "long_key", "unicode", "not_json", "big", "wide", "guard",
                "signature", "replay"]

    @st.composite
    def build(draw: Any) -> HttpCase:
        body: dict[str, Any] = {"service": draw(services), "payload": draw(payloads)}
        if draw(st.booleans()):
            body["request_id"] = _unique_id()
        if draw(st.booleans()):
            body["timeout"] = draw(st.sampled_from([0.5, 1, 5, 30, 300]))
        mutator = draw(st.sampled_from(mutators))
        raw: bytes | None = None
        repeat = 1
        signing = "ok"
        if mutator == "service_type":
            body["service"] = draw(values.filter(lambda v: not isinstance(v, str)))
        elif mutator == "service_text":
            body["service"] = draw(text)
        elif mutator == "payload_type":
            body["payload"] = draw(values.filter(lambda v: not isinstance(v, dict)))
        elif mutator == "request_id":
            body["request_id"] = draw(st.one_of(text, values))
        elif mutator == "timeout":
            choice = draw(st.sampled_from([*ODD_NUMBERS, "30", True, None, [], {}, "NaN", "Infinity", "-Infinity",
                                           "1e999"]))
            if choice in ("NaN", "Infinity", "-Infinity", "1e999"):  # not JSON, but what some encoders write
                body.pop("timeout", None)
                raw = _dumps(body)[:-1] + b', "timeout": ' + choice.encode() + b"}"
            else:
                body["timeout"] = choice
        elif mutator == "missing":
            for key in draw(st.sampled_from([["service"], ["payload"], ["service", "payload"]])):
                body.pop(key, None)
        elif mutator == "extra":
            body.update(draw(st.dictionaries(text, values, min_size=1, max_size=4)))
        elif mutator == "deep":
            depth = draw(st.sampled_from([30, 31, 32, 33, 64, 1000, 100_000]))
            opener, closer = draw(st.sampled_from([(b'{"a":', b"}"), (b"[", b"]")]))
            nested = opener * (depth - 1) + b"1" + closer * (depth - 1)
            inner = b'{"k":' + nested + b"}"
            service = _dumps(body["service"])
            raw = b'{"service":' + service + b',"payload":' + inner + b"}"
            if draw(st.booleans()):  # the whole body deeply nested, not only the payload
                raw = b"[" * depth + b"]" * depth
        elif mutator == "nul_key":
            body["payload"] = {**body["payload"], draw(st.sampled_from(["\x00", "a\x00", "\x00b" * 3])): 1}
        elif mutator == "long_key":
            body["payload"] = {"k" * draw(st.sampled_from([1023, 1024, 1025, 5000])): 1}
        elif mutator == "unicode":
            odd = draw(st.text(alphabet=st.characters(codec=None, categories=None), min_size=1, max_size=30))
            body["payload"] = {odd: odd, "text": odd + "\ud800"}
            if draw(st.booleans()):  # as raw UTF-8 with lone surrogates: not valid UTF-8 at all
                raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        elif mutator == "not_json":
            raw = draw(st.sampled_from([
                b"", b" ", b"null", b"[]", b'"x"', b"1", b"true", b"{", b'{"service":', b"\xff\xfe\x00",
                b'\xef\xbb\xbf{"service":"tokenguard","payload":{}}', b'{"service":"tokenguard","payload":{}}x',
                b'{"service":"tokenguard","service":1,"payload":{}}', b'{"service":"tokenguard","payload":{}}' * 2,
                b'{"service":"tokenguard","payload":{"a":NaN}}', b"{'service':'tokenguard'}", b"\x00" * 16,
                b'{"service":"tokenguard","payload":{"a":1e99999}}', b'{"service":"tokenguard","payload":{},}',
            ]))
        elif mutator == "big":
            body["payload"] = {"text": "x" * draw(st.sampled_from([10_000, 100_000, 1_000_000]))}
        elif mutator == "wide":
            body["payload"] = {f"k{i}": i for i in range(draw(st.sampled_from([1000, 10_000, 50_000])))}
        elif mutator == "guard":
            body["service"] = draw(st.sampled_from(ctx.guards))
            directive = draw(st.sampled_from(["status:400", "status:401", "status:403", "status:404",
                                              "status:409", "status:422", "status:429", "status:451",
                                              "status:499", "status:500", "status:502", "status:503",
                                              "status:301", "status:204", "status:201", "badjson", "close",
                                              "nan", "infinity", "nan:422", "sleep:0.2", "sleep:1.5"]))
            body["payload"] = {**body["payload"], "fuzz_guard": directive}
            if directive.startswith("sleep"):
                body["timeout"] = draw(st.sampled_from([0.05, 0.5, 5]))
        elif mutator == "signature":
            signing = draw(st.sampled_from(["none", "no_timestamp", "no_signature", "stale", "future",
                                            "not_digits", "arabic_digits", "long_digits", "upper", "garbage",
                                            "non_ascii", "wrong_body", "spaces"]))
        elif mutator == "replay":
            repeat = 2
        if raw is None:
            raw = _dumps(body)
        headers = [("Content-Type", "application/json"), *_signature_headers(ctx, raw, signing)]
        return HttpCase("mutation", f"orchestrate/{mutator}" + (f"/{signing}" if signing != "ok" else ""), "POST",
                        "/v1/orchestrate", headers, raw, repeat=repeat)

    return build()


def _signature_headers(ctx: Context, body: bytes, how: str) -> list[tuple[str, str]]:
    now = int(time.time())
    good = ctx.signer.headers(body)
    stamp, sig = good["X-Aeyon-Timestamp"], good["X-Aeyon-Signature"]
    variants: dict[str, list[tuple[str, str]]] = {
        "ok": [("X-Aeyon-Timestamp", stamp), ("X-Aeyon-Signature", sig)],
        "none": [],
        "no_timestamp": [("X-Aeyon-Signature", sig)],
        "no_signature": [("X-Aeyon-Timestamp", stamp)],
        "stale": list(ctx.signer.headers(body, now - 301).items()),
        "future": list(ctx.signer.headers(body, now + 400).items()),
        "not_digits": [("X-Aeyon-Timestamp", "12ab"), ("X-Aeyon-Signature", sig)],
        "arabic_digits": [("X-Aeyon-Timestamp", "١٢٣٤"), ("X-Aeyon-Signature", sig)],
        "long_digits": [("X-Aeyon-Timestamp", "9" * 400), ("X-Aeyon-Signature", sig)],
        "upper": [("X-Aeyon-Timestamp", stamp), ("X-Aeyon-Signature", "sha256=" + sig[7:].upper())],
        "garbage": [("X-Aeyon-Timestamp", stamp), ("X-Aeyon-Signature", "sha256=" + "z" * 64)],
        "non_ascii": [("X-Aeyon-Timestamp", stamp), ("X-Aeyon-Signature", "sha256=" + "é" * 64)],
        "wrong_body": list(ctx.signer.headers(body + b" ").items()),
        "spaces": [("X-Aeyon-Timestamp", f" {stamp} "), ("X-Aeyon-Signature", f" {sig} ")],
    }
    return variants[how]


KNOWN_PATHS = ["/v1/orchestrate", "/health", "/ready", "/metrics", "/openapi.json", "/v1/services", "/v1/actors",
               "/v1/services/tokenguard", "/v1/services/nope", "/v1/events", "/"]
ODD_PATHS = ["/", "/v1", "/v1/", "/v1/orchestrate/", "/V1/ORCHESTRATE", "//v1/orchestrate", "/v1/orchestrate?x=1",
             "/health/", "/health?%00", "/v1/services/", "/v1/services/%00", "/v1/services/%2e%2e",
             "/v1/services/a/b", "/%ff", "/%zz", "/%", "/%25", "/v1/services/%F0%9F%98%80", "/openapi.json?x",
             "/health#frag", "/ready;x", "/v1/actors/..", "/v1/../health", "/%2e%2e/%2e%2e/etc/passwd", "*",
             "http://127.0.0.1/health", "/metrics?name[]=x", "/a" * 500, "/" + "b" * 8000, "/v1/events?since=0",
             "/v1/events?types=BOGUS", "/v1/events?types=REQUEST_ROUTED,SECURITY_VIOLATION&since=5",
             "/v1/events?since=-1", "/v1/events?since=" + "9" * 30, "/v1/events?types=&type=,,", "/v1/events/"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "FOO", "get", "M-SEARCH",
           "PROPFIND", "X" * 100]


def _method_path_mutation(ctx: Context, st: Any, text: Any) -> Any:
    @st.composite
    def build(draw: Any) -> HttpCase:
        method = draw(st.sampled_from(METHODS))
        path = draw(st.one_of(st.sampled_from(KNOWN_PATHS), st.sampled_from(ODD_PATHS),
                              text.map(lambda t: "/" + _quote(t, safe="/")),
                              text.map(lambda t: "/v1/services/" + _quote(t))))
        body = draw(st.sampled_from([None, b"", b"{}", b'{"service":"tokenguard","payload":{}}', b"\x00\xff"]))
        headers = [("Authorization", f"Bearer {ctx.token}")] if draw(st.booleans()) else []
        if path.startswith("/v1/services/") and path.rsplit("/", 1)[-1] in ctx.guards and method == "DELETE":
            headers = []  # the configured guards stay
        if body is not None:
            headers += ctx.signed(body)
        return HttpCase("mutation", "method-path", method, path, headers, body)

    return build()


def _header_mutation(ctx: Context, st: Any, text: Any, payloads: Any) -> Any:
    latin1 = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                     max_size=60)
    header_values = st.one_of(latin1, st.sampled_from(["", " ", "\x00", "a\x00b", "\t", "x" * 200, "x" * 15_000,
                                                       "é", "\xff\xfe", "1, 2", "🙂"]))

    @st.composite
    def build(draw: Any) -> HttpCase:
        service = draw(st.sampled_from(ctx.guards))
        body = _dumps({"service": service, "payload": draw(payloads)})
        headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
        which = draw(st.sampled_from(["x-request-id", "x-client-id", "x-forwarded-for", "content-type", "expect",
                                      "chunked", "encoding", "duplicates", "many", "odd-name", "connection",
                                      "authorization"]))
        method, path = "POST", "/v1/orchestrate"
        if which == "x-request-id":
            headers.append(("X-Request-ID", draw(st.one_of(header_values, st.from_regex(r"\A[A-Za-z0-9_-]{1,100}\Z")))))
        elif which == "x-client-id":
            headers.append(("X-Client-ID", draw(st.one_of(header_values, st.just("c" * 128), st.just("c" * 129)))))
        elif which == "x-forwarded-for":
            headers.append(("X-Forwarded-For", draw(st.one_of(header_values, st.sampled_from([
                "10.1.2.3", "8.8.8.8", "127.0.0.1", "::1", "::ffff:10.0.0.1", "8.8.8.8, 127.0.0.1",
                "10.0.0.1, 8.8.8.8", "garbage, 10.0.0.1", "999.1.1.1", "[::1]", "10.0.0.1:80", ",,,", "unknown"])))))
        elif which == "content-type":
            headers = [("Content-Type", draw(st.one_of(header_values, st.sampled_from([
                "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                "application/json; charset=utf-16"]))))]
        elif which == "expect":
            headers.append(("Expect", draw(st.sampled_from(["100-continue", "100-Continue", "200-ok", "", "x"]))))
        elif which == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
            size = draw(st.integers(1, max(1, len(body))))
            chunks = [body[i:i + size] for i in range(0, len(body), size)]
            body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            headers += ctx.signed(_dechunk(body))
            return HttpCase("mutation", f"headers/{which}", method, path, headers, body)
        elif which == "encoding":
            headers.append(("Content-Encoding", draw(st.sampled_from(["gzip", "br", "identity", "x"]))))
        elif which == "duplicates":
            name = draw(st.sampled_from(["X-Request-ID", "Content-Type", "X-Client-ID", "X-Aeyon-Timestamp",
                                         "Host", "Authorization"]))
            headers += [(name, "dup-1"), (name, "dup-2")]
        elif which == "many":
            count = draw(st.sampled_from([50, 200, 1000]))
            headers += [(f"X-Fuzz-{i}", "v" * draw(st.integers(0, 30))) for i in range(count)]
        elif which == "odd-name":
            headers.append((draw(st.sampled_from(["X Space", "X:Colon", "", "X\x00", "Ä", "X\t", "(x)", "x" * 300])),
                            "1"))
        elif which == "connection":
            headers.append(("Connection", draw(st.sampled_from(["close", "keep-alive", "Upgrade", "upgrade, close",
                                                                "x"]))))
            if draw(st.booleans()):
                headers.append(("Upgrade", draw(st.sampled_from(["websocket", "h2c", "HTTP/2.0", "x"]))))
        elif which == "authorization":
            method, path = draw(st.sampled_from([("GET", "/v1/services"), ("POST", "/v1/orchestrate")]))
            headers.append(("Authorization", draw(header_values)))
        if which not in ("chunked",) and method == "POST":
            headers += ctx.signed(body)
        return HttpCase("mutation", f"headers/{which}", method, path, headers, body if method == "POST" else None)

    return build()


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    rest = data
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return b"".join(out)
        out.append(rest[:size])
        rest = rest[size + 2:]


def _admin_mutation(ctx: Context, st: Any, text: Any, values: Any) -> Any:
    @st.composite
    def build(draw: Any) -> HttpCase:
        auth = draw(st.sampled_from(["token", "token", "token", "none", "wrong", "bare", "lower", "trailing",
                                     "basic", "nul", "only-token"]))
        auth_header = {
            "token": f"Bearer {ctx.token}", "wrong": "Bearer nope", "bare": "Bearer", "lower": f"bearer {ctx.token}",
            "trailing": f"Bearer {ctx.token} ", "basic": "Basic dXNlcjpwYXNz", "nul": f"Bearer {ctx.token}\x00",
            "only-token": ctx.token,
        }.get(auth)
        headers = [("Authorization", auth_header)] if auth_header is not None else []
        if draw(st.integers(0, 3)) == 0:
            name = draw(st.one_of(text, st.sampled_from(["nope", "fuzz-gone", "", "tokenguard/x"])))
            if name in ctx.guards:
                headers = []
            return HttpCase("mutation", f"admin/delete/{auth}", "DELETE", "/v1/services/" + _quote(name),
                            headers)
        name = draw(st.one_of(st.sampled_from(["fuzz-a", "fuzz-b", "fuzz-c", "tokenguard"]),
                              st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,63}\Z"), text))
        body: Any = {"name": name, "service_type": draw(st.sampled_from([*GUARD_TYPES, "generic"])),
                     "url": ctx.guard_url}
        broken = draw(st.sampled_from(["none", "none", "none", "name", "type", "url", "metadata", "policy",
                                       "breaker", "path", "huge_metadata", "not_object", "missing"]))
        if broken == "name":
            body["name"] = draw(values)
        elif broken == "type":
            body["service_type"] = draw(st.one_of(text, values))
        elif broken == "url":
            body["url"] = draw(st.one_of(values, st.sampled_from([
                "", "ftp://h/", "http://", "http://user:pw@127.0.0.1:1", "http://127.0.0.1:1/?q=1",
                "http://127.0.0.1:1/#f", "http://127.0.0.1:99999", "http://[::1", "javascript:alert(1)",
                "http://127.0.0.1:1\x00", "http://" + "h" * 5000])))
        elif broken == "metadata":
            body["metadata"] = draw(values)
        elif broken == "policy":
            body["metadata"] = {"failure_policy": draw(st.one_of(text, values)),
                                "allow_unchecked": draw(values)}
        elif broken == "breaker":
            body["metadata"] = {"breaker": draw(st.one_of(values, st.dictionaries(
                st.sampled_from(["window_size", "minimum_calls", "failure_rate_threshold", "slow_call_duration_s",
                                 "open_base_s", "open_max_s", "half_open_calls", "bogus"]),
                st.one_of(st.sampled_from(ODD_NUMBERS), st.booleans(), text), max_size=4)))}
        elif broken == "path":
            body["metadata"] = {"path": draw(st.one_of(text, values, st.just("/" + "p" * 2000)))}
        elif broken == "huge_metadata":
            body["metadata"] = {"blob": "m" * draw(st.sampled_from([16_000, 17_000, 200_000]))}
        elif broken == "not_object":
            body = draw(values.filter(lambda v: not isinstance(v, dict)))
        elif broken == "missing":
            body.pop(draw(st.sampled_from(["name", "service_type", "url"])))
        return HttpCase("mutation", f"admin/register/{broken}/{auth}", "POST", "/v1/services",
                        [("Content-Type", "application/json"), *headers], _dumps(body))

    return build()


def mutation_cases(ctx: Context, budget: int, seed: int, big: bool) -> list[HttpCase]:
    """``budget`` mutation cases: a few fixed ones (the body-size edges), the rest drawn by hypothesis."""
    fixed = _fixed_mutations(ctx, big)
    drawn = draw_examples(mutation_strategy(ctx), max(0, budget - len(fixed)), seed ^ 0x5EED)
    return (fixed + drawn)[:budget]


def _fixed_mutations(ctx: Context, big: bool) -> list[HttpCase]:
    cases = []

    def orchestrate(name: str, body: bytes, extra: Sequence[tuple[str, str]] = ()) -> None:
        headers = [("Content-Type", "application/json"), *ctx.signed(body), *extra]
        cases.append(HttpCase("mutation", f"fixed/{name}", "POST", "/v1/orchestrate", headers, body))

    orchestrate("content-length-over-10MiB", b"{}", [("Content-Length", str(MAX_BODY + 1))])
    orchestrate("content-length-huge", b"{}", [("Content-Length", "9" * 30)])
    # Numbers and constants that Python's json module takes but JSON does not have.
    orchestrate("payload-number-overflows-a-float", b'{"service":"tokenguard","payload":{"n":1e99999}}')
    orchestrate("payload-nan-constant", b'{"service":"tokenguard","payload":{"n":NaN}}')
    orchestrate("guard-answers-200-with-nan", b'{"service":"tokenguard","payload":{"fuzz_guard":"nan"}}')
    orchestrate("guard-answers-200-with-infinity", b'{"service":"trustguard","payload":{"fuzz_guard":"infinity"}}')
    orchestrate("guard-answers-422-with-nan", b'{"service":"tokenguard","payload":{"fuzz_guard":"nan:422"}}')
    orchestrate("fail-open-guard-answers-nan", b'{"service":"biasguard","payload":{"fuzz_guard":"nan"}}')
    orchestrate("payload-100000-deep", b'{"service":"tokenguard","payload":' + b'{"a":' * 100_000 + b"1"
                + b"}" * 100_000 + b"}")
    if big:
        prefix = b'{"service":"tokenguard","payload":{"text":"'
        suffix = b'"}}'
        exact = prefix + b"x" * (MAX_BODY - len(prefix) - len(suffix)) + suffix
        orchestrate("body-exactly-10MiB", exact)
        orchestrate("body-10MiB-plus-1", exact[:-3] + b'x"}}')
        orchestrate("body-5MiB", prefix + b"y" * (5 << 20) + suffix)
    return cases


# -- raw cases -----------------------------------------------------------------------------------------------------


def raw_cases(ctx: Context, budget: int, big: bool) -> tuple[list[RawCase], list[RawCase]]:
    """``budget`` raw byte-stream cases; the second list holds those that stall (run in the background)."""
    rng = ctx.rng
    builders: list[Callable[[Context, random.Random], RawCase]] = [
        _raw_garbage, _raw_garbage_line, _raw_truncated_head, _raw_bad_content_length, _raw_bad_chunked,
        _raw_huge_head, _raw_odd_framing, _raw_pipeline, _raw_pipeline, _raw_pipeline, _raw_early_close,
        _raw_expect_continue, _raw_chunked_ok,
    ]
    stalls = [_raw_stall(ctx, rng, which) for which in ("head", "body", "idle", "chunked", "continue", "after-head")
              for _ in range(max(1, budget // 400))]
    cases = [_raw_head_then_malformed(ctx, tail) for tail in (b"X-A: a\x00\r\n", b"NoColon\r\n")]
    if big:
        cases += [_raw_big_upload(ctx, rng, chunked) for chunked in (False, True)]
    while len(cases) + len(stalls) < budget:
        cases.append(rng.choice(builders)(ctx, rng))
    return cases, stalls


def _head(ctx: Context, method: str, path: str, headers: Sequence[tuple[str, str]] = (), body: bytes | None = None,
          request_id: str | None = None) -> bytes:
    all_headers = list(headers)
    if request_id:
        all_headers.append(("X-Request-ID", request_id))
    return encode_request(method, path, all_headers, body, ctx.host)


def _valid_request(ctx: Context, rng: random.Random) -> tuple[bytes, str, str, str]:
    """A well-formed request: (bytes, method, path, X-Request-ID)."""
    request_id = _unique_id("raw")
    pick = rng.randrange(8)
    if pick == 0:
        return _head(ctx, "GET", "/health", request_id=request_id), "GET", "/health", request_id
    if pick == 1:
        return _head(ctx, "HEAD", "/health", request_id=request_id), "HEAD", "/health", request_id
    if pick == 2:
        return _head(ctx, "GET", "/metrics", request_id=request_id), "GET", "/metrics", request_id
    if pick == 3:
        return _head(ctx, "GET", "/nope", request_id=request_id), "GET", "/nope", request_id
    if pick == 4:
        return _head(ctx, "PUT", "/health", body=b"x", request_id=request_id), "PUT", "/health", request_id
    if pick == 5:
        body = b'{"service": "tokenguard", "payload": [1]}'
        return (_head(ctx, "POST", "/v1/orchestrate", ctx.signed(body), body, request_id), "POST",
                "/v1/orchestrate", request_id)
    body = _dumps({"service": rng.choice(ctx.guards), "payload": {"text": request_id, "n": rng.random()}})
    return (_head(ctx, "POST", "/v1/orchestrate", [("Content-Type", "application/json"), *ctx.signed(body)], body,
                  request_id), "POST", "/v1/orchestrate", request_id)


def _raw_garbage(ctx: Context, rng: random.Random) -> RawCase:
    data = rng.randbytes(rng.choice([1, 10, 100, 1000, 5000]))
    return RawCase("raw", "garbage", [data], "shut")


def _raw_garbage_line(ctx: Context, rng: random.Random) -> RawCase:
    line = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(1, 200)))
    return RawCase("raw", "garbage-line", [line + b"\r\n\r\n"], rng.choice(["shut", "read"]), answers=0)


def _raw_truncated_head(ctx: Context, rng: random.Random) -> RawCase:
    data, *_ = _valid_request(ctx, rng)
    end = data.index(b"\r\n\r\n")
    cut = rng.randrange(1, end + 3)
    after = rng.choice(["shut", "shut", "close"])
    return RawCase("raw", f"truncated-head/{after}", [data[:cut]], after)


def _raw_bad_content_length(ctx: Context, rng: random.Random) -> RawCase:
    body = b'{"service":"tokenguard","payload":{}}'
    value = rng.choice(["abc", "-1", "1.5", "0x10", " 5", "5, 6", "+5", "", "99999999999999999999",
                        str(MAX_BODY + 1), str(len(body) + 10), str(max(0, len(body) - 10)), "1" * 400])
    headers = [("Content-Length", value), *ctx.signed(body)]
    if rng.random() < 0.2:
        headers.append(("Content-Length", str(len(body))))
    data = _head(ctx, "POST", "/v1/orchestrate", headers, body, _unique_id("raw"))
    return RawCase("raw", f"bad-content-length/{value[:12]!r}", [data], "shut", methods=["POST"])


def _raw_bad_chunked(ctx: Context, rng: random.Random) -> RawCase:
    body = rng.choice([
        b"zz\r\nabc\r\n0\r\n\r\n", b"5\r\nab\r\n0\r\n\r\n", b"3\r\nabcdef\r\n0\r\n\r\n", b"ffffffffffffffffff\r\nab",
        b"-1\r\nab\r\n0\r\n\r\n", b"0x3\r\nabc\r\n0\r\n\r\n", b"3\nabc\n0\n\n", b"3;ext=1\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n", b"3\r\nabc", b"3\r\nabc\r\n", b"\r\n\r\n", b"1" * 100 + b"\r\n",
        b"3 \r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\ngarbage",
    ])
    te = rng.choice(["chunked", "chunked", "Chunked", "gzip, chunked", "chunked, gzip", "identity", "x"])
    headers = [("Transfer-Encoding", te)]
    if rng.random() < 0.3:
        headers.append(("Content-Length", "3"))
    data = _head(ctx, "POST", "/v1/orchestrate", headers, None, _unique_id("raw")) + body
    return RawCase("raw", f"bad-chunked/{te}", [data], "shut", methods=["POST"])


def _raw_huge_head(ctx: Context, rng: random.Random) -> RawCase:
    which = rng.choice(["one-header", "many-headers", "long-target", "just-under", "slow-growing"])
    if which == "one-header":
        data = _head(ctx, "GET", "/health", [("X-Big", "b" * rng.choice([16_500, 17_000, 100_000]))])
    elif which == "many-headers":
        data = _head(ctx, "GET", "/health", [(f"X-H{i}", "v" * 20) for i in range(rng.choice([600, 1000, 5000]))])
    elif which == "long-target":
        data = _head(ctx, "GET", "/health?" + "q" * rng.choice([16_500, 40_000]))
    elif which == "just-under":
        data = _head(ctx, "GET", "/health", [("X-Big", "b" * 15_000)], request_id=_unique_id("raw"))
        return RawCase("raw", "huge-head/just-under", [data], "read", methods=["GET"], paths=["/health"],
                       answers=1)
    else:
        head = _head(ctx, "GET", "/health", [("X-Big", "b" * 20_000)])
        return RawCase("raw", "huge-head/slow-growing", [head[:8000], head[8000:16000], head[16000:]], "shut",
                       wait_first=0.05)
    return RawCase("raw", f"huge-head/{which}", [data], rng.choice(["shut", "read"]))


def _raw_odd_framing(ctx: Context, rng: random.Random) -> RawCase:
    host = ctx.host.encode()
    forms = {
        "bare-lf": b"GET /health HTTP/1.1\nHost: " + host + b"\n\n",
        "bare-cr": b"GET /health HTTP/1.1\rHost: " + host + b"\r\r",
        "obs-fold": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nX-A: 1\r\n  folded\r\n\r\n",
        "no-colon": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nNoColon\r\n\r\n",
        "space-before-colon": b"GET /health HTTP/1.1\r\nHost : " + host + b"\r\n\r\n",
        "nul-in-header": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nX-A: a\x00b\r\n\r\n",
        "non-ascii-name": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nX-\xc3\xa9: 1\r\n\r\n",
        "non-ascii-value": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nX-A: \xff\xfe\r\n\r\n",
        "leading-crlf": b"\r\n\r\nGET /health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "empty-name": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\n: x\r\n\r\n",
        "http10": b"GET /health HTTP/1.0\r\n\r\n",
        "http10-keepalive": b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "http09": b"GET /health\r\n\r\n",
        "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "version-9.9": b"GET /health HTTP/9.9\r\nHost: " + host + b"\r\n\r\n",
        "version-1.12": b"GET /health HTTP/1.12\r\nHost: " + host + b"\r\n\r\n",
        "lower-version": b"GET /health http/1.1\r\nHost: " + host + b"\r\n\r\n",
        "absolute-form": b"GET http://" + host + b"/health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "asterisk": b"OPTIONS * HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "connect": b"CONNECT " + host + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "no-host": b"GET /health HTTP/1.1\r\n\r\n",
        "two-hosts": b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "bad-host": b"GET /health HTTP/1.1\r\nHost: \x01\x02\r\n\r\n",
        "tab-separated": b"GET\t/health\tHTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "double-space": b"GET  /health  HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "no-target": b"GET HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "space-in-target": b"GET /hea lth HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "utf8-target": b"GET /h\xc3\xa9alth HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
        "upgrade-websocket": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: Upgrade\r\n"
                             b"Upgrade: websocket\r\n\r\n",
        "upgrade-h2c": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        "get-with-body": b"GET /health HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 5\r\n\r\nhello",
        "head-with-body": b"HEAD /health HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 2\r\n\r\nhi",
        "tls-hello": bytes.fromhex("16030100a5010000a10303") + rng.randbytes(64),
        "ssh-banner": b"SSH-2.0-OpenSSH_9.0\r\n",
    }
    name = rng.choice(sorted(forms))
    method = "HEAD" if name == "head-with-body" else "GET"
    return RawCase("raw", f"framing/{name}", [forms[name]], "shut", methods=[method])


def _raw_pipeline(ctx: Context, rng: random.Random) -> RawCase:
    count = rng.randrange(2, 9)
    requests_ = [_valid_request(ctx, rng) for _ in range(count)]
    data = b"".join(r[0] for r in requests_)
    methods = [r[1] for r in requests_]
    paths: list[str | None] = [r[2] for r in requests_]
    ids = [r[3] for r in requests_]
    name = "pipeline"
    after = rng.choice(["shut", "read", "close-header"])
    malformed = rng.random() < 0.3
    if malformed:
        if rng.random() < 0.4:  # a HEAD right before it: its answer has no body, the next one must still have one
            request_id = _unique_id("raw")
            data += _head(ctx, "HEAD", rng.choice(["/health", "/nope", "*"]), request_id=request_id)
            methods.append("HEAD")
            paths.append(None)
            ids.append(request_id)
            name += "+head"
        data += rng.choice([b"GARBAGE\r\n\r\n", b"GET /health HTTP/1.1\r\n\r\n",
                            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00\r\n\r\n",
                            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17_000 + b"\r\n\r\n",
                            b"POST /v1/orchestrate HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"])
        methods.append("GET")
        paths.append(None)
        name += "+malformed"
        # Half-closed, the shim may drop what it has not answered yet (counted); read, the malformed request must
        # be answered (400 or 431) after every request before it, and the connection closed.
        after = rng.choice(["shut", "read"])
    if after == "close-header":
        last = _head(ctx, "GET", "/health", [("Connection", "close")], request_id=_unique_id("raw"))
        data += last
        methods.append("GET")
        paths.append("/health")
        ids.append(last.split(b"X-Request-ID: ")[1].split(b"\r\n")[0].decode())
        after = "shut-no-eof"
    # Sent in pieces at random boundaries: the server must put requests together from any split.
    cuts = sorted(rng.sample(range(1, len(data)), min(rng.randrange(0, 5), len(data) - 1)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return RawCase("raw", f"{name}/{after}", chunks, after, methods=methods, paths=paths, ids=ids,
                   answers=len(ids) + (1 if malformed else 0), wait_first=0.002 if len(chunks) > 1 else 0.0,
                   malformed_last=malformed)


def _raw_head_then_malformed(ctx: Context, tail: bytes) -> RawCase:
    """A HEAD answered on a keep-alive connection, then a malformed request: it must still get its 400."""
    request_id = _unique_id("raw")
    data = (_head(ctx, "HEAD", "/health", request_id=request_id)
            + b"GET /health HTTP/1.1\r\nHost: " + ctx.host.encode() + b"\r\n" + tail + b"\r\n")
    return RawCase("raw", "fixed/head-then-malformed", [data], "read", methods=["HEAD", "GET"],
                   paths=["/health", None], ids=[request_id], answers=2, malformed_last=True)


def _raw_early_close(ctx: Context, rng: random.Random) -> RawCase:
    which = rng.choice(["after-request", "mid-body", "after-slow-request", "rst"])
    if which == "mid-body":
        body = b'{"service":"tokenguard","payload":{"text":"' + b"x" * 1000 + b'"}}'
        data = _head(ctx, "POST", "/v1/orchestrate", ctx.signed(body), body)
        return RawCase("raw", "early-close/mid-body", [data[:len(data) - 500]], "close")
    if which == "after-slow-request":
        body = _dumps({"service": rng.choice(ctx.guards), "payload": {"fuzz_guard": "sleep:0.3"}})
        data = _head(ctx, "POST", "/v1/orchestrate", ctx.signed(body), body)
        return RawCase("raw", "early-close/while-guard-works", [data], "close")
    data, *_ = _valid_request(ctx, rng)
    return RawCase("raw", f"early-close/{which}", [data], "rst" if which == "rst" else "close")


def _raw_expect_continue(ctx: Context, rng: random.Random) -> RawCase:
    body = _dumps({"service": rng.choice(ctx.guards), "payload": {"text": "continue"}})
    request_id = _unique_id("raw")
    head = _head(ctx, "POST", "/v1/orchestrate", [("Expect", "100-continue"), *ctx.signed(body),
                                                  ("Content-Length", str(len(body)))], None, request_id)
    return RawCase("raw", "expect-100-continue", [head, body], "read", methods=["POST"], paths=["/v1/orchestrate"],
                   ids=[request_id], answers=1, expect_continue=True)


def _raw_chunked_ok(ctx: Context, rng: random.Random) -> RawCase:
    body = _dumps({"service": rng.choice(ctx.guards), "payload": {"text": "chunks" * rng.randrange(1, 50)}})
    size = rng.randrange(1, len(body) + 1)
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    ext = rng.choice([b"", b";a=b"])
    chunked = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces) + b"0\r\n\r\n"
    request_id = _unique_id("raw")
    head = _head(ctx, "POST", "/v1/orchestrate", [("Transfer-Encoding", "chunked"), *ctx.signed(body)], None,
                 request_id)
    data = head + chunked
    cuts = sorted(rng.sample(range(1, len(data)), min(3, len(data) - 1)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return RawCase("raw", "chunked-ok", chunks, "read", methods=["POST"], paths=["/v1/orchestrate"], ids=[request_id],
                   answers=1, wait_first=0.002)


def _raw_big_upload(ctx: Context, rng: random.Random, chunked: bool) -> RawCase:
    piece = b"z" * (1 << 20)
    if chunked:
        head = _head(ctx, "POST", "/v1/orchestrate", [("Transfer-Encoding", "chunked")])
        chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
        return RawCase("raw", "big-upload/chunked-over-10MiB", [head] + [chunk] * 12 + [b"0\r\n\r\n"], "read",
                       methods=["POST"], answers=1, deadline=30)
    head = _head(ctx, "POST", "/v1/orchestrate", [("Content-Length", str(12 << 20))])
    return RawCase("raw", "big-upload/content-length-12MiB", [head] + [piece] * 12, "read", methods=["POST"],
                   answers=1, deadline=30)


def _raw_stall(ctx: Context, rng: random.Random, which: str) -> RawCase:
    request_id = _unique_id("raw")
    if which == "head":
        data = _head(ctx, "GET", "/health", request_id=request_id)[:rng.randrange(5, 30)]
    elif which == "body":
        data = _head(ctx, "POST", "/v1/orchestrate", [("Content-Length", "100")], None, request_id) + b'{"serv'
    elif which == "chunked":
        data = _head(ctx, "POST", "/v1/orchestrate", [("Transfer-Encoding", "chunked")], None, request_id) + b"5\r\nab"
    elif which == "continue":
        data = _head(ctx, "POST", "/v1/orchestrate", [("Expect", "100-continue"), ("Content-Length", "40")], None,
                     request_id)
    elif which == "after-head":  # a HEAD answered, then the next request's head never completes: still a 408
        data = _head(ctx, "HEAD", "/health", request_id=request_id) + b"GET /health HTTP/1.1\r\nHo"
        return RawCase("raw", "stall/after-head", [data], "stall", methods=["HEAD", "GET"], paths=["/health", None],
                       ids=[request_id], answers=2, deadline=STALL_DEADLINE_S)
    else:
        data = b""
    return RawCase("raw", f"stall/{which}", [data] if data else [], "stall", methods=["POST"],
                   deadline=STALL_DEADLINE_S, expect_continue=which == "continue")


# ------------------------------------------------------------------------------------------------------ execution


@dataclass
class Failure:
    """One failed check."""

    kind: str
    case: str
    problem: str
    request: str
    answer: str
    before: str = ""  # the request before it on the same keep-alive connection, when that may matter


@dataclass
class Tally:
    """What the run saw."""

    cases: Counter[str] = field(default_factory=Counter)
    names: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    raw_outcomes: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    outcomes_by_case: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, answer: Answer) -> None:
        """Count an answer's status and error code (and the degraded successes)."""
        with self.lock:
            if answer.error:
                return
            self.statuses[answer.status] += 1
            body = _json(answer.body) if answer.body[:1] == b"{" else None
            if not isinstance(body, dict):
                return
            if isinstance(body.get("error"), dict):
                code = str(body["error"].get("code"))
                self.codes[code] += 1
                message = re.sub(r"'[^']*'|\d+", "#", str(body["error"].get("message")))[:70]
                self.messages[f"{answer.status} {code}: {message}"] += 1
            elif body.get("degraded") is True:
                self.codes["(degraded success)"] += 1

    def fail(self, failure: Failure) -> None:
        """Record a failure."""
        with self.lock:
            self.failures.append(failure)


class Runner:
    """Sends the cases and checks the answers."""

    def __init__(self, ctx: Context, orch: Orchestrator, tally: Tally, conformance: bool,
                 guards: Mapping[str, GuardServer]):
        self.ctx = ctx
        self.orch = orch
        self.guards = guards
        self.tally = tally
        self.client = Client(ctx.port)
        self.conformance = conformance
        self.registered: set[str] = set()
        self.previous: tuple[str, str, bytes] | None = None  # the last request on the keep-alive client

    # -- HTTP cases

    def run_http(self, case: HttpCase) -> None:
        """Send an ``HttpCase`` (``repeat`` times) and check each answer."""
        data = encode_request(case.method, case.target, case.headers, case.body, self.ctx.host)
        for _ in range(case.repeat):
            self.tally.requests[case.kind] += 1
            answer = self.client.send(data, case.method)
            self.tally.seen(answer)
            problems = check_answer(answer, case.method, case.path)
            if self.client.unsolicited and self.previous is not None:
                kind, name, previous = self.previous
                self.tally.fail(Failure(kind, name, "the server sent bytes after answering this request (an answer "
                                        "too many?)", _short(previous, 1500), _short(self.client.unsolicited, 300)))
            self.previous = (case.kind, case.name, data)
            if not problems and case.schema_case is not None and self.conformance and not answer.error:
                problems = self._conformance(case, answer)
            before = _short(self.client.before, 600) if self.client.before is not None and answer.error else ""
            for problem in problems:
                self.tally.fail(Failure(case.kind, case.name, problem, _short(data, 1500), answer.describe(), before))
            if answer.status == 201 and case.method == "POST" and case.path == "/v1/services":
                self._remove_registered(answer)

    def _remove_registered(self, answer: Answer) -> None:
        body = _json(answer.body)
        name = body.get("name") if isinstance(body, dict) else None
        if not isinstance(name, str):
            return
        self.registered.add(name)
        if self.remove(name):
            self.registered.discard(name)

    def remove(self, name: str) -> bool:
        """DELETE a service this run registered (checked like any answer)."""
        data = encode_request("DELETE", "/v1/services/" + quote(name, safe=""),
                              [("Authorization", f"Bearer {self.ctx.token}")], None, self.ctx.host)
        self.tally.requests["clean-up"] += 1
        answer = self.client.send(data, "DELETE")
        self.tally.seen(answer)
        problems = check_answer(answer, "DELETE", "/v1/services/" + name)
        if answer.status != 204:
            problems.append(f"removing the just-registered service {name!r} answered {answer.status}")
        for problem in problems:
            self.tally.fail(Failure("clean-up", f"remove {name}", problem, _short(data), answer.describe()))
        return answer.status in (204, 404)

    def _conformance(self, case: HttpCase, answer: Answer) -> list[str]:
        import requests
        from schemathesis import Response
        from schemathesis.core.failures import FailureGroup
        from schemathesis.specs.openapi.checks import (
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
            status_code_conformance,
        )

        headers: dict[str, list[str]] = {}
        for name, value in answer.headers:
            headers.setdefault(name.lower(), []).append(value)
        request = requests.Request(case.method, f"http://{self.ctx.host}{case.target}").prepare()
        response = Response(answer.status, headers, answer.body, request, answer.elapsed, verify=True)
        try:
            case.schema_case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                                                 response_headers_conformance,
                                                                 response_schema_conformance])
        except FailureGroup as group:
            return [f"does not conform to system/openapi.json: {_first_line(str(exc))}" for exc in group.exceptions]
        except AssertionError as exc:
            return [f"does not conform to system/openapi.json: {_first_line(str(exc))}"]
        except Exception as exc:  # the checker itself failed: report it as such, not as the server's failure
            return [f"conformance check could not run: {type(exc).__name__}: {_first_line(str(exc))}"]
        return []

    # -- raw cases

    def run_raw(self, case: RawCase) -> None:
        """Send a ``RawCase`` on a connection of its own and check what comes back."""
        self.tally.requests[case.kind] += max(1, len(case.methods))
        sent = b"".join(case.chunks)
        try:
            outcome, answers, problems = self._raw(case)
        except OSError as exc:
            outcome, answers, problems = f"client error {type(exc).__name__}", [], []
        with self.tally.lock:
            self.tally.raw_outcomes[outcome] += 1
            self.tally.outcomes_by_case[f"{case.name.split('/')[0]}: {outcome}"] += 1
        for answer in answers:
            self.tally.seen(answer)
        for problem in problems:
            shown = " | ".join(a.describe() for a in answers) or outcome
            self.tally.fail(Failure(case.kind, case.name, problem, _short(sent, 1500), _short(shown, 1500)))

    def _raw(self, case: RawCase) -> tuple[str, list[Answer], list[str]]:
        sock = socket.create_connection(("127.0.0.1", self.ctx.port), timeout=case.deadline)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.monotonic()
            stream = sock.makefile("rb")
            problems: list[str] = []
            early = False
            for index, chunk in enumerate(case.chunks):
                if case.expect_continue and index == 1:
                    interim = _read_interim(stream)
                    if interim != 100:
                        problems.append(f"Expect: 100-continue got {interim!r} before the body, not 100 Continue")
                        early = True
                        break
                try:
                    early = _send_watching(sock, chunk)
                except OSError:
                    early = True
                if early:
                    break
                if case.wait_first and index < len(case.chunks) - 1:
                    time.sleep(case.wait_first)
            if case.after in ("close", "rst"):
                if case.after == "rst":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                return "closed by the client", [], problems
            if case.after == "shut" and not early:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            answers: list[Answer] = []
            wanted = case.answers
            index = 0
            outcome = "answered"
            while True:
                remaining = case.deadline - (time.monotonic() - started)
                if remaining <= 0:
                    break
                if case.after in ("read",) and index >= max(wanted, 1) and not early:
                    break
                sock.settimeout(remaining)
                method = case.methods[index] if index < len(case.methods) else "GET"
                answer = read_answer(stream, method, started)
                if answer.closed:
                    outcome = "closed after answering" if answers else "closed without an answer"
                    break
                if answer.error and "deadline" in answer.error:
                    outcome = "deadline"
                    break
                answers.append(answer)
                index += 1
                if answer.error:
                    outcome = "unparseable answer"
                    break
                if answer.stream:
                    outcome = "event stream opened"
                    break
                if case.after == "shut-no-eof" and index >= wanted:
                    break
                if case.after == "stall" and index >= max(wanted, 1):
                    break
            return outcome, answers, problems + self._judge_raw(case, answers, outcome)
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _judge_raw(self, case: RawCase, answers: list[Answer], outcome: str) -> list[str]:
        problems: list[str] = []
        for i, answer in enumerate(answers):
            method = case.methods[i] if i < len(case.methods) else None
            path = case.paths[i] if i < len(case.paths) else None
            for problem in check_answer(answer, method, path):
                problems.append(f"answer {i + 1}: {problem}")
            if i < len(case.ids) and not answer.error and answer.header("X-Request-ID") != case.ids[i]:
                problems.append(f"answer {i + 1} carries X-Request-ID {answer.header('X-Request-ID')!r}, not "
                                f"{case.ids[i]!r}: pipelined answers out of order")
        if case.malformed_last and len(answers) == case.answers and answers[-1].status not in (400, 431):
            problems.append(f"the malformed request at the end was answered {answers[-1].status}, not 400/431")
        if len(answers) < case.answers:
            if case.after == "shut":
                # The shim takes a client's half-close as leaving (a proxy's 499): the requests it had not answered
                # yet are dropped and the connection closed. Not a hang; counted, not failed.
                with self.tally.lock:
                    self.tally.raw_outcomes["half-closed pipeline cut short"] += 1
            else:
                problems.append(f"{len(answers)} answers to {case.answers} requests that must be answered "
                                f"({outcome})")
        if outcome == "deadline" and case.after in ("shut", "stall"):
            problems.append(f"neither answered nor closed within {case.deadline:g} s (hang)")
        if case.after == "stall" and len(answers) >= max(case.answers, 1) and answers[-1].status != 408:
            problems.append(f"a stalled request answered {answers[-1].status}, not 408")
        return problems

    # -- what the guards received

    def guard_bodies(self) -> int:
        """How many non-JSON bodies the guards have received so far."""
        return sum(len(guard.not_json) for guard in self.guards.values())

    def check_guard_bodies(self, case: HttpCase | RawCase, before: int) -> None:
        """A guard that received a body that is not JSON during this case: the shim forwarded something that is
        not the caller's payload as JSON (the cases run one at a time, so it was this one)."""
        if self.guard_bodies() == before:
            return
        bodies = [body for guard in self.guards.values() for body in guard.not_json]
        request = (encode_request(case.method, case.target, case.headers, case.body, self.ctx.host)
                   if isinstance(case, HttpCase) else b"".join(case.chunks))
        self.tally.fail(Failure(case.kind, case.name, "a guard was sent a body that is not JSON (RFC 8259)",
                                _short(request, 1500), f"the guard received: {bodies[-1]}"))

    # -- liveness

    def liveness(self, where: str) -> None:
        """``GET /health`` must be 200 and serve alive."""
        if not self.orch.alive():
            self.tally.fail(Failure("liveness", where, f"aeyon serve exited with {self.orch.process.returncode}",
                                    "", log_tail(self.orch.log_path, 20)))
            raise FuzzError("aeyon serve died")
        try:
            status = http_get(self.ctx.port, "/health", 5.0)[0]
        except (OSError, http.client.HTTPException) as exc:
            status, detail = 0, f"{type(exc).__name__}: {exc}"
        else:
            detail = str(status)
        if status != 200:
            self.tally.fail(Failure("liveness", where, "GET /health is not 200", "GET /health", detail))


def _read_interim(stream: io.BufferedReader) -> int | None:
    try:
        line = stream.readline(1024)
        parts = line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        if status == 100:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                pass
        return status
    except (OSError, ValueError):
        return None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[:3])[:400]


# ---------------------------------------------------------------------------------------------------------- main


@dataclass
class Settings:
    """The command line."""

    cases: int
    seed: int
    smoke: bool
    conformance: bool
    json_path: Path | None
    verbose: bool = False
    keep: bool = False


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="bin/fuzz", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=None, help="how many cases to send (default 10000; "
                                                                 f"{SMOKE_CASES} with --smoke)")
    parser.add_argument("--seed", type=int, default=None, help="the seed of every generator (default: random, "
                                                                "printed)")
    parser.add_argument("--smoke", action="store_true", help=f"a quick run: {SMOKE_CASES} cases, no 10 MiB bodies")
    parser.add_argument("--no-conformance", action="store_true",
                        help="skip checking schema cases' answers against system/openapi.json")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary as JSON to this path")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the error messages seen and the raw outcomes per case family")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (the serve log)")
    args = parser.parse_args(argv)
    cases = args.cases if args.cases is not None else (SMOKE_CASES if args.smoke else 10_000)
    if cases < 20:
        parser.error("--cases must be at least 20")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    return Settings(cases, seed, args.smoke, not args.no_conformance, args.json, args.verbose, args.keep)


def build_cases(ctx: Context, settings: Settings) -> tuple[list[HttpCase | RawCase], list[RawCase]]:
    """Every case, in the (seeded) order they are sent, and the stalled ones for the background."""
    n = settings.cases
    raw, stalls = raw_cases(ctx, n * 20 // 100, big=not settings.smoke)
    mutations = mutation_cases(ctx, n * 30 // 100, settings.seed, big=not settings.smoke)
    negative = schema_cases(ctx, "negative", n * 20 // 100, settings.seed)
    positive = schema_cases(ctx, "positive", n - len(raw) - len(stalls) - len(mutations) - len(negative),
                            settings.seed)
    cases: list[HttpCase | RawCase] = [*positive, *negative, *mutations, *raw]
    ctx.rng.shuffle(cases)
    return cases, stalls


def run(settings: Settings, out: Callable[[str], None] = print) -> int:
    """The whole run; the exit status."""
    try:
        import hypothesis.configuration
        import schemathesis  # noqa: F401
    except ImportError as exc:
        out(f"fuzz: {exc.name} is not installed; install the fuzz extra: pip install -e '.[fuzz]' (bin/fuzz does)")
        return 2
    tally = Tally()
    problems: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="aeyon-fuzz-"))
    hypothesis.configuration.set_hypothesis_home_dir(str(workdir / "hypothesis"))  # not .hypothesis/ in the cwd
    token, key = secrets.token_hex(16), secrets.token_hex(16)
    started = time.monotonic()
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    status = 1
    try:
        with guards_running(GUARD_TYPES) as guards:
            env = {f"{name.upper()}_URL": guard.url for name, guard in guards.items()}
            env.update({
                "AEYON_ADMIN_TOKEN": token,
                "SECURITY_SECRET_KEY": key,
                "SECURITY_MAX_REQUESTS_PER_MINUTE": MAX_RATE_LIMIT,
                "SECURITY_ALLOWED_IPS": "127.0.0.0/8,::1/128,10.0.0.0/8",
                "AEYON_TRUSTED_PROXIES": "127.0.0.1/32",
                "AEYON_FAIL_OPEN": FAIL_OPEN_GUARD,
                "AEYON_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
                "AEYON_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
                "AEYON_HTTP_IDLE_TIMEOUT": str(IDLE_TIMEOUT_S),
                "AEYON_HEALTH_TIMEOUT": "2",
            })
            with orchestrator_running(env, workdir, problems) as orch:
                ctx = Context(orch.http_port, token, Signer(key), GUARD_TYPES, guards["tokenguard"].url,
                              random.Random(settings.seed))
                out(f"fuzz: seed {settings.seed}; generating {settings.cases} cases ...")
                cases, stalls = build_cases(ctx, settings)
                out(f"fuzz: sending them to aeyon serve (pid {orch.process.pid}, port {orch.http_port}) ...")
                status = _send_all(ctx, orch, tally, settings, cases, stalls, guards)
            for failure in scan_log(orch.log_path):
                tally.fail(failure)
            if status == 0 and tally.failures:
                status = 1
    except FuzzError as exc:
        out(f"fuzz: {exc}")
        status = 2 if not tally.cases else 1
    except (KeyboardInterrupt, Interrupted):
        out("fuzz: interrupted")
        status = 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if settings.keep:
            out(f"fuzz: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for problem in problems:
        tally.fail(Failure("stop", "aeyon stop", problem, "", ""))
    if problems and status == 0:
        status = 1
    if tally.cases:
        report(tally, settings, time.monotonic() - started, out)
    if settings.json_path is not None:
        settings.json_path.write_text(json.dumps(summary_json(tally, settings), indent=2))
    return status


def scan_log(path: Path) -> list[Failure]:
    """A traceback in the serve log is a failure even when every answer looked right (a bug was caught and
    contained somewhere): one failure per distinct last line, with the traceback's tail."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found: dict[str, Failure] = {}
    for index, line in enumerate(lines):
        if not line.startswith("Traceback"):
            continue
        end = index + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or lines[end].startswith("During")
                                    or lines[end].startswith("Traceback") or not lines[end].strip()):
            end += 1
        last = lines[end] if end < len(lines) else lines[end - 1]
        context = lines[max(0, index - 1)]
        if last not in found:
            tail = " / ".join(x.strip() for x in lines[max(index, end - 6):end + 1])
            found[last] = Failure("serve-log", "traceback", f"the serve log has a traceback: {last.strip()[:200]}",
                                  context.strip()[:300], tail)
    return list(found.values())


def _send_all(ctx: Context, orch: Orchestrator, tally: Tally, settings: Settings, cases: list[HttpCase | RawCase],
              stalls: list[RawCase], guards: Mapping[str, GuardServer]) -> int:
    runner = Runner(ctx, orch, tally, settings.conformance, guards)
    stall_threads = [threading.Thread(target=_count_and_run, args=(runner, tally, case), daemon=True)
                     for case in stalls]
    for thread in stall_threads:
        thread.start()
    try:
        for index, case in enumerate(cases, 1):
            with tally.lock:
                tally.cases[case.kind] += 1
                tally.names[case.name.split("/")[0]] += 1
            seen = runner.guard_bodies()
            try:
                if isinstance(case, HttpCase):
                    runner.run_http(case)
                else:
                    runner.run_raw(case)
            except OSError as exc:  # the client side failed (e.g. could not connect): the server is in doubt
                tally.fail(Failure(case.kind, case.name, f"client error: {type(exc).__name__}: {exc}", "", ""))
                runner.client.close()
            runner.check_guard_bodies(case, seen)
            if index % LIVENESS_EVERY == 0:
                runner.liveness(f"after case {index}")
        for thread in stall_threads:
            thread.join(STALL_DEADLINE_S + 5)
        for name in sorted(runner.registered):
            runner.remove(name)
        runner.liveness("at the end")
    finally:
        runner.client.close()
    return 0


def _count_and_run(runner: Runner, tally: Tally, case: RawCase) -> None:
    with tally.lock:
        tally.cases[case.kind] += 1
        tally.names[case.name.split("/")[0]] += 1
    runner.run_raw(case)


def _group(failures: list[Failure]) -> dict[str, list[Failure]]:
    groups: dict[str, list[Failure]] = {}
    for failure in failures:
        # One group per problem, with the bodies and figures that vary per request taken out.
        key = re.sub(r" b'.*| b\".*", "", failure.problem)
        key = re.sub(r"'[^']*'|(?<!RFC )\b\d+\b", "#", key)
        where = failure.case if failure.case.startswith("fixed/") else failure.case.split("/")[0]
        groups.setdefault(f"{key}  [{where}]", []).append(failure)
    return groups


def report(tally: Tally, settings: Settings, elapsed: float, out: Callable[[str], None]) -> None:
    """Print the summary."""
    total = sum(tally.cases.values())
    out("")
    out(f"fuzz summary: seed {settings.seed}, {total} cases, {sum(tally.requests.values())} requests, "
        f"{elapsed:.1f} s")
    out(f"{'kind':<18}{'cases':>8}{'requests':>10}")
    for kind in [*KINDS, "clean-up"]:
        if tally.cases[kind] or tally.requests[kind]:
            out(f"{kind:<18}{tally.cases[kind]:>8}{tally.requests[kind]:>10}")
    out("case families: " + ", ".join(f"{name} {count}" for name, count in sorted(tally.names.items())))
    out("statuses: " + ", ".join(f"{status} x{count}" for status, count in sorted(tally.statuses.items())))
    out("error codes: " + ", ".join(f"{code} x{count}" for code, count in sorted(tally.codes.items())))
    out("raw outcomes: " + ", ".join(f"{name} x{count}" for name, count in sorted(tally.raw_outcomes.items())))
    if settings.verbose:
        out("answers by error message:")
        for message, count in sorted(tally.messages.items(), key=lambda item: -item[1]):
            out(f"  {count:>6}  {message}")
        out("raw outcomes by case family:")
        for outcome, count in sorted(tally.outcomes_by_case.items()):
            out(f"  {count:>6}  {outcome}")
    if not tally.failures:
        out("failures: none")
        return
    groups = _group(tally.failures)
    out(f"failures: {len(tally.failures)} in {len(groups)} distinct kinds")
    for key, failures in sorted(groups.items(), key=lambda item: -len(item[1])):
        out(f"\n  x{len(failures)}  {key}")
        for failure in failures[:2]:
            out(f"    case:    {failure.kind} {failure.case}")
            out(f"    problem: {failure.problem}")
            if failure.request:
                out(f"    request: {failure.request}")
            out(f"    got:     {failure.answer}")
            if failure.before:
                out(f"    after:   {failure.before} (the request before it on the same connection)")


def summary_json(tally: Tally, settings: Settings) -> dict[str, Any]:
    """The summary as JSON-ready data."""
    return {
        "seed": settings.seed,
        "cases": dict(tally.cases),
        "requests": dict(tally.requests),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "codes": dict(tally.codes),
        "raw_outcomes": dict(tally.raw_outcomes),
        "failures": [failure.__dict__ for failure in tally.failures],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
