"""A loopback server that answers each request with scripted raw bytes: for exact HTTP answers (chunked bodies,
missing lengths, odd statuses, garbage) that a well-behaved server library would not send.

``CannedGuard(answer)``: ``answer`` is the raw response (bytes), or a callable given the parsed request that returns
the raw response or an iterable of pieces sent one after another (a generator may pause between them), or None
to close the connection without answering. Connections are kept alive until the
client closes them, unless ``close_after_answer``. Requests and accepted connections are counted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

__all__ = ["CannedGuard", "Received", "http_answer"]


@dataclass(frozen=True)
class Received:
    """One request as the server read it."""

    request_line: str
    headers: dict[str, str]
    body: bytes


Answer = bytes | Callable[[Received], bytes | Iterable[bytes] | None] | None


def http_answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                reason: str = "Whatever") -> bytes:
    """A raw HTTP/1.1 answer with a Content-Length (unless ``headers`` set Transfer-Encoding)."""
    fields = dict(headers or {})
    if "Transfer-Encoding" not in fields:
        fields.setdefault("Content-Length", str(len(body)))
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode("latin-1") + body


class CannedGuard:
    """See the module docstring. Use as a context manager; ``url`` is its ``/scan`` endpoint."""

    def __init__(self, answer: Answer, *, close_after_answer: bool = False):
        self.answer = answer
        self.close_after_answer = close_after_answer
        self.received: list[Received] = []
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/scan"
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CannedGuard:
        self._acceptor.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop accepting, close every connection, and wait for the threads."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._acceptor.join(5)
        self._server.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        reader = conn.makefile("rb")
        try:
            while not self._stopping.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                self.received.append(request)
                raw = self.answer(request) if callable(self.answer) else self.answer
                if raw is None:
                    return
                for piece in [raw] if isinstance(raw, bytes) else raw:
                    conn.sendall(piece)
                if self.close_after_answer:
                    return
        except OSError:
            return
        finally:
            reader.close()
            conn.close()


def _read_request(reader: BinaryIO) -> Received | None:
    line = reader.readline(65537)
    if not line:
        return None
    headers: dict[str, str] = {}
    while True:
        field = reader.readline(65537)
        if field in (b"\r\n", b"\n", b""):
            break
        name, _, value = field.decode("latin-1").partition(":")
        headers[name.strip()] = value.strip()
    length = int(headers.get("Content-Length", "0"))
    body = reader.read(length) if length else b""
    return Received(line.decode("latin-1").rstrip("\r\n"), headers, body)
