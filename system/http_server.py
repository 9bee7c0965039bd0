"""A non-blocking HTTP/1.1 server core: sockets in one epoll set, parsing by h11, no threads.

The owner (the HttpShim actor) hands Thespian the single epoll fd to watch, calls ``poll()`` when it is ready,
answers each ``HttpRequest`` with ``respond()`` whenever the answer is known, and calls ``expire()`` on a timer.
One request per connection is with the application at a time; pipelined requests wait in h11's buffer and are
answered in order. Reading from a connection stops while its request is with the application, so a client cannot
make the server buffer without bound.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

import attrs
import h11

Headers = list[tuple[str, str]]
ErrorBody = Callable[[int, str, str], tuple[Headers, bytes]]

_READ_SIZE = 65536
_MAX_READ_PER_ROUND = 1 << 20
_MAX_ACCEPT_PER_ROUND = 256
_LINGER_S = 2.0

# Connection states.
_WAITING = 0  # waiting for (the rest of) a request's head
_BODY = 1  # reading a request body
_APP = 2  # the request is with the application
_DRAIN = 3  # answered; flushing and then closing (lingering: reading and dropping what the client still sends)
_STREAM = 4  # a streamed answer (server-sent events) is being written; it ends with the connection

# A streaming client that has not taken this much of what we wrote is too slow: it is cut off.
MAX_STREAM_BACKLOG = 1 << 20

_REASONS = {int(s): s.phrase.encode() for s in HTTPStatus}

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_GONE = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


@attrs.frozen
class HttpLimits:
    """Limits that keep one client from holding the server (slowloris, huge heads or bodies, floods)."""

    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    idle_timeout_s: float = 60.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    write_timeout_s: float = 30.0
    max_connections: int = 10_000
    backlog: int = 1024


@attrs.define
class HttpRequest:
    """A complete request handed to the application; answer it with ``HttpServer.respond(conn_id, ...)``."""

    conn_id: int
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client_ip: str
    received_at: float


class _Connection:
    __slots__ = (
        "body",
        "body_size",
        "client_ip",
        "conn_id",
        "deadline",
        "fd",
        "h11",
        "head",
        "mask",
        "method",
        "out",
        "sock",
        "started",
        "state",
    )

    def __init__(self, conn_id: int, sock: socket.socket, client_ip: str, max_header_bytes: int, deadline: float):
        self.conn_id = conn_id
        self.sock = sock
        self.fd = sock.fileno()
        self.client_ip = client_ip
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.state = _WAITING
        self.deadline = deadline
        self.started = False
        self.head: h11.Request | None = None
        self.method = b""
        self.body: list[bytes] = []
        self.body_size = 0
        self.out = bytearray()
        self.mask = _IN


class HttpServer:
    """Accepts, parses and answers HTTP/1.1 connections; see the module docstring for the protocol."""

    def __init__(self, limits: HttpLimits, error_body: ErrorBody, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._error_body = error_body
        self._now = clock
        self._epoll = select.epoll()
        self._listener: socket.socket | None = None
        self._conns: dict[int, _Connection] = {}  # by fd
        self._by_id: dict[int, _Connection] = {}
        self._next_id = 1
        self._ready: list[HttpRequest] = []
        self._gone: list[int] = []
        self._date = b""
        self._date_at = 0.0
        self.address: tuple[str, int] = ("", 0)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen; SO_REUSEPORT lets several shims share the port (the kernel spreads connections)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(self.limits.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._epoll.register(sock.fileno(), _IN)
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        return self.address

    def fileno(self) -> int:
        """The epoll fd: readable whenever any socket needs attention."""
        return self._epoll.fileno()

    def close(self) -> None:
        """Close every connection and the listener."""
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._epoll.close()

    @property
    def connection_count(self) -> int:
        """Open client connections."""
        return len(self._conns)

    # -- events ------------------------------------------------------------------------------------------------

    def poll(self) -> list[HttpRequest]:
        """Handle whatever the sockets have ready; return the requests now complete."""
        listener_fd = self._listener.fileno() if self._listener is not None else -1
        for fd, events in self._epoll.poll(0):
            if fd == listener_fd:
                self._accept()
                continue
            conn = self._conns.get(fd)
            if conn is None:
                continue
            if events & _OUT:
                self._flush(conn)
                if conn.fd not in self._conns:
                    continue
            if conn.state in (_APP, _STREAM):
                if events & _GONE:
                    # The client closed (or half-closed) while its request is with the application: like nginx,
                    # take it as gone; respond() will report that there is nobody to answer.
                    self._close(conn)
                continue
            if events & (_IN | _GONE):
                self._read(conn)
        return self.take_ready()

    def take_gone(self) -> list[int]:
        """Connections closed while their request was with the application (the client went away): the
        application may stop waiting for those answers."""
        gone, self._gone = self._gone, []
        return gone

    def take_ready(self) -> list[HttpRequest]:
        """Requests completed since the last call (answering one may release a pipelined one)."""
        ready, self._ready = self._ready, []
        return ready

    def expire(self) -> None:
        """Close connections past their deadline; a client cut off mid-request gets 408 first."""
        now = self._now()
        for conn in list(self._conns.values()):
            if conn.state == _APP or (conn.state == _STREAM and not conn.out) or now < conn.deadline:
                continue
            if conn.out:
                self._close(conn)  # the client stopped reading our answer
                continue
            if conn.state == _BODY or (conn.state == _WAITING and conn.started):
                self._refuse(conn, 408, "request_timeout", "the request was not received in time")
            else:
                self._close(conn)

    def start_stream(self, conn_id: int, status: int, headers: Iterable[tuple[str, str]]) -> bool:
        """Answer with a head and no length: the body follows in ``stream()`` calls (chunked) until
        ``end_stream()`` or the client leaves. False when the connection is gone."""
        conn = self._by_id.get(conn_id)
        if conn is None or conn.state != _APP:
            return False
        all_headers = [*headers, ("Date", self._http_date()), ("Connection", "close")]
        try:
            data = conn.h11.send(h11.Response(status_code=status, headers=all_headers, reason=_reason(status))) or b""
        except h11.LocalProtocolError:
            self._close(conn)
            return False
        conn.state = _STREAM
        self._write(conn, data)
        return conn.fd in self._conns

    def stream(self, conn_id: int, data: bytes) -> bool:
        """Send part of a streamed body; False when the client is gone or too slow (it is then cut off)."""
        conn = self._by_id.get(conn_id)
        if conn is None or conn.state != _STREAM:
            return False
        if len(conn.out) > MAX_STREAM_BACKLOG:
            self._close(conn)
            return False
        self._write(conn, conn.h11.send(h11.Data(data=data)) or b"")
        return conn.fd in self._conns

    def end_stream(self, conn_id: int) -> None:
        """Finish a streamed body and close the connection once it is written."""
        conn = self._by_id.get(conn_id)
        if conn is None or conn.state != _STREAM:
            return
        conn.state = _DRAIN
        conn.deadline = self._now() + self.limits.write_timeout_s
        self._write(conn, conn.h11.send(h11.EndOfMessage()) or b"")
        if conn.fd in self._conns and not conn.out:
            self._linger(conn)

    def respond(self, conn_id: int, status: int, headers: Iterable[tuple[str, str]], body: bytes,
                close: bool = False) -> bool:
        """Answer the request now with the application; False when its connection is gone."""
        conn = self._by_id.get(conn_id)
        if conn is None or conn.state != _APP:
            return False
        self._send_response(conn, status, headers, body, close)
        return conn.fd in self._conns or conn.state == _DRAIN

    # -- internals ---------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(_MAX_ACCEPT_PER_ROUND):
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED):
                    return
                raise
            if len(self._conns) >= self.limits.max_connections:
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self._next_id, sock, addr[0], self.limits.max_header_bytes,
                               self._now() + self.limits.idle_timeout_s)
            self._next_id += 1
            self._conns[conn.fd] = conn
            self._by_id[conn.conn_id] = conn
            self._epoll.register(conn.fd, _IN)

    def _read(self, conn: _Connection) -> None:
        total = 0
        while total < _MAX_READ_PER_ROUND:
            try:
                data = conn.sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            total += len(data)
            if conn.state == _DRAIN:
                if not data:
                    self._close(conn)
                    return
                continue
            if not data:
                conn.h11.receive_data(b"")
                break
            if conn.state == _WAITING and not conn.started:
                conn.started = True
                conn.deadline = self._now() + self.limits.header_timeout_s
            conn.h11.receive_data(data)
        if conn.state in (_WAITING, _BODY):
            self._advance(conn)

    def _advance(self, conn: _Connection) -> None:
        """Turn buffered bytes into h11 events until a request is complete or more data is needed."""
        while conn.state in (_WAITING, _BODY):
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
                code = "request_header_too_large" if status == 431 else "bad_request"
                self._refuse(conn, status, code, f"malformed HTTP request: {exc}")
                return
            if event is h11.NEED_DATA:
                if conn.h11.their_state is h11.CLOSED or conn.h11.their_state is h11.MUST_CLOSE:
                    self._close(conn)
                return
            if event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                if not self._start_request(conn, event):
                    return
            elif isinstance(event, h11.Data):
                conn.body_size += len(event.data)
                if conn.body_size > self.limits.max_body_bytes:
                    self._refuse(conn, 413, "payload_too_large",
                                 f"request body exceeds {self.limits.max_body_bytes} bytes")
                    return
                conn.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._complete(conn)
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._close(conn)
                return

    def _start_request(self, conn: _Connection, head: h11.Request) -> bool:
        conn.head = head
        conn.method = head.method
        # h11 bounds a head still arriving; one that arrived whole in a single read is measured here.
        size = len(head.method) + len(head.target) + sum(len(n) + len(v) + 4 for n, v in head.headers)
        if size > self.limits.max_header_bytes:
            self._refuse(conn, 431, "request_header_too_large",
                         f"request head exceeds {self.limits.max_header_bytes} bytes")
            return False
        conn.body = []
        conn.body_size = 0
        length = None
        for name, value in head.headers:
            if name == b"content-length":
                length = int(value)  # h11 has checked it is a valid number
        if length is not None and length > self.limits.max_body_bytes:
            # Refused before the body is read: the client learns at once, and we never hold 10 MiB for it.
            self._refuse(conn, 413, "payload_too_large", f"request body exceeds {self.limits.max_body_bytes} bytes")
            return False
        if conn.h11.client_is_waiting_for_100_continue:
            self._write(conn, conn.h11.send(h11.InformationalResponse(status_code=100, headers=[],
                                                                       reason=b"Continue")) or b"")
        conn.state = _BODY
        conn.deadline = self._now() + self.limits.body_timeout_s
        return True

    def _complete(self, conn: _Connection) -> None:
        head = conn.head
        assert head is not None
        headers: dict[str, str] = {}
        for raw_name, raw_value in head.headers:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            headers[name] = headers[name] + ", " + value if name in headers else value
        target = head.target.decode("latin-1")
        path, _, query = target.partition("?")
        conn.state = _APP
        self._set_mask(conn, (conn.mask & _OUT) | select.EPOLLRDHUP)
        self._ready.append(
            HttpRequest(
                conn_id=conn.conn_id,
                method=head.method.decode("ascii", "replace"),
                path=unquote(path),
                query=query,
                headers=headers,
                body=b"".join(conn.body),
                client_ip=conn.client_ip,
                received_at=self._now(),
            )
        )
        conn.body = []
        conn.head = None

    def _refuse(self, conn: _Connection, status: int, code: str, message: str) -> None:
        """Answer a request the application never saw (bad HTTP, too large, too slow), then close."""
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._close(conn)
            return
        headers, body = self._error_body(status, code, message)
        self._send_response(conn, status, headers, body, close=True)

    def _send_response(self, conn: _Connection, status: int, headers: Iterable[tuple[str, str]], body: bytes,
                       close: bool) -> None:
        all_headers = [(name, value) for name, value in headers]
        bodiless = status in (204, 304)
        if not bodiless:
            all_headers.append(("Content-Length", str(len(body))))
        all_headers.append(("Date", self._http_date()))
        if close:
            all_headers.append(("Connection", "close"))
        try:
            data = conn.h11.send(h11.Response(status_code=status, headers=all_headers, reason=_reason(status))) or b""
            if body and not bodiless and conn.method != b"HEAD":
                data += conn.h11.send(h11.Data(data=body)) or b""
            data += conn.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            self._close(conn)
            return
        keep = not close and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
        if keep:
            conn.h11.start_next_cycle()
            conn.method = b""  # the next request's (a HEAD's bodiless answer must not carry over)
            conn.state = _WAITING
            conn.started = bool(conn.h11.trailing_data[0])
            conn.deadline = self._now() + (
                self.limits.header_timeout_s if conn.started else self.limits.idle_timeout_s
            )
        else:
            conn.state = _DRAIN
            conn.deadline = self._now() + self.limits.write_timeout_s
        self._write(conn, data)
        if conn.fd not in self._conns:
            return
        if keep:
            self._set_mask(conn, (conn.mask & _OUT) | _IN)
            self._advance(conn)
        elif not conn.out:
            self._linger(conn)

    def _write(self, conn: _Connection, data: bytes) -> None:
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent < len(data):
            conn.out += data[sent:]
            self._set_mask(conn, conn.mask | _OUT)
            conn.deadline = self._now() + self.limits.write_timeout_s

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        if conn.out:
            conn.deadline = self._now() + self.limits.write_timeout_s  # progress: the client is reading
            return
        self._set_mask(conn, conn.mask & ~_OUT)
        if conn.state == _WAITING:
            conn.deadline = self._now() + (self.limits.header_timeout_s if conn.started else self.limits.idle_timeout_s)
        if conn.state == _DRAIN:
            self._linger(conn)

    def _linger(self, conn: _Connection) -> None:
        # Closing with unread input makes the kernel send RST, which can destroy our answer before the client
        # reads it (a 413 for an upload in progress): half-close, read and drop for a moment, then close.
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.deadline = self._now() + _LINGER_S
        self._set_mask(conn, _IN)

    def _set_mask(self, conn: _Connection, mask: int) -> None:
        if mask != conn.mask:
            conn.mask = mask
            self._epoll.modify(conn.fd, mask)

    def _close(self, conn: _Connection) -> None:
        if self._conns.pop(conn.fd, None) is None:
            return
        self._by_id.pop(conn.conn_id, None)
        if conn.state in (_APP, _STREAM):
            self._gone.append(conn.conn_id)
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(conn.fd)
        conn.sock.close()

    def _http_date(self) -> str:
        now = time.time()
        if now - self._date_at >= 1.0:
            self._date = formatdate(now, usegmt=True).encode()
            self._date_at = now
        return self._date.decode()


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")
