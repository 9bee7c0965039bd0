"""A guard server on loopback that misbehaves on command, for integration and fault tests.

``FakeGuard`` answers ``POST`` to any path and ``GET /health``; ``set_mode`` and ``set_health`` choose how:

==============  ============================================================================================
mode            answer
==============  ============================================================================================
ok              200 JSON: POST ``{"ok": true, "echo": body, "path", "request_id"}``; health its status/body
status          ``code=`` with JSON ``body=`` (default ``{"error": "fake guard answered <code>"}``)
hang            reads the request and never answers, until the client closes or ``stop()``
slow            answers as ``ok`` after ``delay=`` seconds (``stop()`` cuts the wait short)
invalid_json    200, ``Content-Type: application/json``, body ``not json{``
reset           reads the request, then closes with SO_LINGER 0: the client sees a connection reset
close           reads the request, then closes cleanly without answering
sequence        ``modes=[(mode, kw), ...]`` (or bare mode names), one per request, cycling: flapping
==============  ============================================================================================

Every request is recorded in ``requests`` before it is answered. Bodies must come with a Content-Length.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MODES", "FakeGuard", "RecordedRequest", "last_post", "refused_port"]

# The keyword arguments each mode takes, and which of them it needs.
_KEYWORDS: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "ok": (frozenset(), frozenset()),
    "status": (frozenset({"code", "body"}), frozenset({"code"})),
    "hang": (frozenset(), frozenset()),
    "slow": (frozenset({"delay"}), frozenset({"delay"})),
    "invalid_json": (frozenset(), frozenset()),
    "reset": (frozenset(), frozenset()),
    "close": (frozenset(), frozenset()),
    "sequence": (frozenset({"modes"}), frozenset({"modes"})),
}
MODES = frozenset(_KEYWORDS)

_Step = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake guard received; ``headers`` keep the client's spelling of their names."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body, or the raw bytes when it is not JSON


def _checked(mode: str, kw: Mapping[str, Any], *, nested: bool = False) -> list[_Step]:
    """Validate a mode and its keywords; return the steps it cycles through (one unless a sequence)."""
    if mode not in _KEYWORDS or (nested and mode == "sequence"):
        raise ValueError(f"unknown fake guard mode {mode!r}")
    allowed, required = _KEYWORDS[mode]
    if not required <= kw.keys() <= allowed:
        raise ValueError(f"mode {mode!r} takes {sorted(allowed)}, needs {sorted(required)}; got {sorted(kw)}")
    if mode != "sequence":
        return [(mode, dict(kw))]
    steps: list[_Step] = []
    for step in kw["modes"]:
        name, step_kw = (step, {}) if isinstance(step, str) else step
        steps += _checked(name, step_kw, nested=True)
    if not steps:
        raise ValueError("a sequence needs at least one mode")
    return steps


class _Server(socketserver.ThreadingTCPServer):
    """Threaded TCP server that remembers live connections so stop() can cut them, hung ones included."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, fake: FakeGuard) -> None:
        self.fake = fake
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._live: dict[socket.socket, threading.Thread] = {}
        super().__init__(("127.0.0.1", port), _Handler)

    # Any: the typeshed request type is private; only stream sockets reach a TCP server.
    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection, registered so close_all() can cut it short."""
        with self._lock:
            self._live[request] = threading.current_thread()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._live.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that went away, which fault tests do on purpose; report anything else."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_all(self, timeout: float) -> None:
        """Stop accepting, wake and cut every connection, and wait (bounded) for their threads."""
        self.stopping.set()
        self.shutdown()
        self.server_close()
        with self._lock:
            live = list(self._live.items())
        for sock, _ in live:
            # shutdown, not close: it wakes a thread blocked in recv() on this socket.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in live:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    """Reads each request, records it, and answers as the fake guard's current mode says."""

    protocol_version = "HTTP/1.1"
    # Separate writes for headers and body must not wait for delayed ACKs (~40 ms a call).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: fault tests provoke errors on purpose."""

    def do_POST(self) -> None:
        """Answer a guard call on any path."""
        self._serve(health=False)

    def do_GET(self) -> None:
        """Answer health checks; any other GET is 404."""
        self._serve(health=urlsplit(self.path).path == "/health")

    def _serve(self, *, health: bool) -> None:
        fake = self.server.fake
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body: Any = json.loads(raw)
        except (ValueError, RecursionError):
            body = raw
        path = urlsplit(self.path).path
        fake._record(RecordedRequest(self.command, path, dict(self.headers.items()), body))
        if self.command == "GET" and not health:
            self._reply(404, {"error": f"no route {path}"})
            return
        mode, kw = fake._next_step(health=health)
        if health:
            ok = fake._health_answer
        else:
            echo = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            request_id = self.headers.get("X-Request-ID")
            ok = (200, {"ok": True, "echo": echo, "path": path, "request_id": request_id})
        if mode == "ok":
            self._reply(*ok)
        elif mode == "status":
            self._reply(kw["code"], kw.get("body", {"error": f"fake guard answered {kw['code']}"}))
        elif mode == "slow":
            if self.server.stopping.wait(kw["delay"]):
                self.close_connection = True
            else:
                self._reply(*ok)
        elif mode == "invalid_json":
            self._reply_bytes(200, b"not json{")
        elif mode == "hang":
            self._hang()
        elif mode == "reset":
            self._reset()
        else:  # close: the framework shuts the socket down cleanly (FIN) once we return
            self.close_connection = True

    def _reply(self, status: int, body: Any) -> None:
        self._reply_bytes(status, json.dumps(body).encode())

    def _reply_bytes(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _hang(self) -> None:
        self.close_connection = True
        # Drain whatever arrives until the client closes (recv gives b"") or stop() shuts the socket down.
        with contextlib.suppress(OSError):
            while self.connection.recv(65536):
                pass

    def _reset(self) -> None:
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Closing here, before the framework's shutdown(SHUT_WR), makes the close an RST and not a FIN; rfile
        # holds a reference to the socket that would otherwise defer the real close.
        self.rfile.close()
        self.connection.close()


class FakeGuard:
    """A guard on 127.0.0.1 that answers as told; serves from construction until stop() or ``with`` ends."""

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Lock()
        self._steps: dict[bool, list[_Step]] = {False: [("ok", {})], True: [("ok", {})]}
        self._turns: dict[bool, int] = {False: 0, True: 0}
        self._health_answer: tuple[int, Any] = (200, {"status": "healthy"})
        self._stopped = False
        self.requests: list[RecordedRequest] = []
        self._server = _Server(port, self)
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A short poll interval keeps stop() quick; fault tests start and stop many of these.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-guard-{self.port}", daemon=True)
        self._thread.start()

    def set_mode(self, mode: str, **kw: Any) -> None:
        """Choose how the next and later POSTs are answered (see the module docstring)."""
        steps = _checked(mode, kw)
        with self._lock:
            self._steps[False], self._turns[False] = steps, 0

    def set_health(self, status_code: int = 200, body: Any = None, mode: str = "ok", **kw: Any) -> None:
        """Choose how ``GET /health`` is answered; ``ok`` answers ``status_code`` with ``body``."""
        steps = _checked(mode, kw)
        with self._lock:
            self._health_answer = (status_code, {"status": "healthy"} if body is None else body)
            self._steps[True], self._turns[True] = steps, 0

    def count(self, path: str | None = None, method: str | None = None) -> int:
        """Count the requests received, optionally only those to ``path`` and/or with ``method``."""
        with self._lock:
            return sum(1 for r in self.requests if path in (None, r.path) and method in (None, r.method))

    @property
    def last_request(self) -> RecordedRequest | None:
        """The most recent request received, or None."""
        with self._lock:
            return self.requests[-1] if self.requests else None

    def clear(self) -> None:
        """Forget the requests received so far."""
        with self._lock:
            self.requests.clear()

    def stop(self, timeout: float = 2.0) -> None:
        """Close the listener and every connection, release hung handlers, join threads; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.close_all(timeout)
        self._thread.join(timeout)

    def __enter__(self) -> FakeGuard:
        """Return the running fake guard."""
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop the fake guard."""
        self.stop()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next_step(self, *, health: bool) -> _Step:
        with self._lock:
            steps = self._steps[health]
            turn = self._turns[health]
            self._turns[health] = turn + 1
        return steps[turn % len(steps)]


def last_post(guard: FakeGuard) -> RecordedRequest:
    """The most recent POST the guard received (health checks interleave with calls); LookupError if none."""
    with guard._lock:
        posts = [r for r in guard.requests if r.method == "POST"]
    if not posts:
        raise LookupError(f"{guard.url} has received no POST")
    return posts[-1]


def refused_port() -> int:
    """Return a loopback port on which nothing listens (free when checked; another process could take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
