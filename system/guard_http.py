"""Guard calls over plain keep-alive HTTP/1.1 connections: the hot path under ``GuardClient.call``.

A worker makes one call at a time, so it needs one connection per guard origin and nothing of a pool. Each call
is written with one ``sendall`` (request line, headers and body together) and its answer parsed by
``http.client.HTTPResponse`` (Content-Length or chunked). Measured on the project's 2-core machine against nginx
(README.rst, "Performance"): about 150 us of CPU per call, where the same call through ``requests``
(``adapter.send`` with a prepared request, its cheapest use) costs about 350 us; at thousands of calls a second
that difference is a third of a core. Health checks, made a few times a minute, stay on ``requests``.

What a call may not do: follow redirects (a guard that redirects is misconfigured), use proxies, or outlive its
deadline: every socket operation is bounded by the time left, which is checked again between body chunks.
A connection the guard closed while idle is noticed before it is reused; a send that fails on a reused
connection is made once more on a fresh one (the guard received nothing). Any failure closes the connection.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import requests.utils

CHUNK = 64 * 1024


class TooLarge(Exception):
    """The answer is larger than allowed."""


class Late(Exception):
    """The deadline passed while the answer was still arriving."""


class _Target:
    """An endpoint, parsed once: where to connect and the bytes that start each request to it."""

    __slots__ = ("host", "origin", "port", "prefix", "tls")

    def __init__(self, endpoint: str):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.origin = (parts.scheme, self.host, self.port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        self.prefix = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                       f"Accept: application/json\r\nUser-Agent: aeyon-orchestrator\r\n").encode("latin-1")


class _Connection:
    __slots__ = ("poller", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN | select.POLLPRI)

    def dropped(self) -> bool:
        """An idle keep-alive connection with something to read has been closed (or spoken on) by the guard."""
        return bool(self.poller.poll(0))

    def close(self) -> None:
        self.sock.close()


class GuardConnections:
    """One keep-alive connection per guard origin, for one caller at a time; see the module docstring."""

    def __init__(self, *, connect_timeout_s: float, max_response_bytes: int,
                 wallclock: Callable[[], float] = time.time):
        self._connect_timeout_s = connect_timeout_s
        self._max_response_bytes = max_response_bytes
        self._now = wallclock
        self._targets: dict[str, _Target] = {}
        self._connections: dict[tuple[str, str, int], _Connection] = {}
        self._tls: ssl.SSLContext | None = None

    def post(self, endpoint: str, body: bytes, request_id: str, expires_at: float) -> tuple[int, bytes]:
        """POST ``body`` to ``endpoint``; the answer's status and body. Raises ``TimeoutError`` or ``Late`` (the
        deadline passed), ``TooLarge``, ``OSError`` (connecting or the connection failed),
        ``http.client.HTTPException`` (not an HTTP answer), ``ValueError`` (a bad endpoint or request id)."""
        target = self._targets.get(endpoint)
        if target is None:
            target = self._targets[endpoint] = _Target(endpoint)
        if "\r" in request_id or "\n" in request_id:
            raise ValueError("a request id cannot hold line breaks")
        request = b"".join((target.prefix, b"X-Request-ID: ", request_id.encode("latin-1"), b"\r\nContent-Length: ",
                            str(len(body)).encode(), b"\r\n\r\n", body))
        connection = self._connections.pop(target.origin, None)
        if connection is not None and connection.dropped():
            connection.close()
            connection = None
        if connection is not None:
            try:
                self._send(connection, request, expires_at)
            except (BrokenPipeError, ConnectionResetError):
                connection.close()  # closed while idle, past the check: the guard got nothing, so send again
                connection = None
        if connection is None:
            connection = self._connect(target, expires_at)
            self._send(connection, request, expires_at)
        try:
            status, content, reusable = self._receive(connection, expires_at)
        except BaseException:
            connection.close()
            raise
        if reusable:
            self._connections[target.origin] = connection
        else:
            connection.close()
        return status, content

    def close(self) -> None:
        """Close every connection."""
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _left(self, expires_at: float) -> float:
        left = expires_at - self._now()
        if left <= 0:
            raise Late
        return left

    def _connect(self, target: _Target, expires_at: float) -> _Connection:
        sock = socket.create_connection((target.host, target.port),
                                        timeout=min(self._connect_timeout_s, self._left(expires_at)))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.tls:
                sock = self._tls_context().wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _tls_context(self) -> ssl.SSLContext:
        # The same trust as requests' default (its CA bundle), so an https guard is verified either way.
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=requests.utils.DEFAULT_CA_BUNDLE_PATH)
        return self._tls

    def _send(self, connection: _Connection, request: bytes, expires_at: float) -> None:
        connection.sock.settimeout(self._left(expires_at))
        try:
            connection.sock.sendall(request)
        except BaseException:
            connection.close()
            raise

    def _receive(self, connection: _Connection, expires_at: float) -> tuple[int, bytes, bool]:
        sock = connection.sock
        sock.settimeout(self._left(expires_at))
        response = http.client.HTTPResponse(sock, method="POST")
        try:
            response.begin()
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self._max_response_bytes:
                raise TooLarge
            chunks = []
            size = 0
            while True:
                sock.settimeout(self._left(expires_at))
                chunk = response.read1(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > self._max_response_bytes:
                    raise TooLarge
                chunks.append(chunk)
            return response.status, b"".join(chunks), not response.will_close
        finally:
            response.close()
