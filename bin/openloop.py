"""An open-loop HTTP/1.1 load generator for ``bin/bench``: POST requests sent on a fixed schedule, not after replies.

Request ``i`` of a run is due at ``start + i / rate``. It goes out on an idle keep-alive connection of a pool of at
most ``connections`` (opened as needed, the most recently used first, so a low rate keeps few open); when none is
idle and the pool is full, it waits on this side, in order. Its latency is always measured from its scheduled
time, never from when it could be written, so a server that falls behind shows in the figures instead of slowing
the load down (no coordinated omission).

One thread and the standard library only (``selectors``, non-blocking sockets). Answers are parsed minimally:
the status line and ``Content-Length`` (the orchestrator and nginx send one on these routes); ``Connection:
close`` closes the connection after the answer, and a connection the server closes while idle is dropped (a new
one opens when needed). For a non-2xx answer, the orchestrator's error code is read from the body, so the
answers are counted as ``"STATUS"`` or ``"STATUS CODE"`` (``"503 circuit_open"``).

Bounded: a run stops by itself ``drain_s`` seconds after its last scheduled send at the latest; the requests still
unanswered then (in flight or still waiting for a connection) are counted as ``unanswered``, and their time waited
so far (a lower bound of their latency) goes into the percentiles with the answered requests' latencies.

When nothing is in flight, the generator waits for the next send with ``time.sleep`` (nanosecond timer); while
requests are in flight it waits in ``select``, whose timeout is whole milliseconds, so a send can then be up to
about a millisecond late (counted in its latency; ``send_lag`` shows it).
"""

from __future__ import annotations

import array
import errno
import math
import re
import selectors
import socket
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_CONNECTIONS = 64
DEFAULT_DRAIN_S = 5.0
READ_SIZE = 65536
MAX_HEAD = 64 * 1024  # an answer head longer than this is a protocol error

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r", re.IGNORECASE)
CONNECTION_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close[ \t]*\r", re.IGNORECASE)
ERROR_CODE = re.compile(rb'"code"\s*:\s*"(\w+)"')


@dataclass(frozen=True)
class Target:
    """Where the requests go: ``POST path`` with the JSON ``body`` to ``host:port``."""

    host: str
    port: int
    path: str
    body: str

    @property
    def url(self) -> str:
        """The URL requests are sent to."""
        return f"http://{self.host}:{self.port}{self.path}"

    def request(self) -> bytes:
        """The bytes of one request (the same for all)."""
        body = self.body.encode()
        return (f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass(frozen=True)
class OpenLoopResult:
    """The figures of one open-loop run; latencies in milliseconds."""

    url: str
    offered_rate: float  # requests per second scheduled
    duration_s: float  # the schedule's length
    max_connections: int
    scheduled: int
    sent: int  # requests written in full
    answered: int
    unanswered: int  # no answer by the drain deadline (in flight, or never sent: no connection came free)
    statuses: dict[str, int]  # answers by "STATUS" or "STATUS CODE"
    failures: dict[str, int]  # requests that got no answer for another reason: "connect", "closed", "protocol"
    connections_opened: int
    elapsed_s: float  # from the first scheduled send to the last answer
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    send_lag_p50_ms: float | None  # how long after its scheduled time a request was written in full
    send_lag_p99_ms: float | None
    cpu_s: float  # this process's CPU time during the run (time.process_time)

    @property
    def achieved_rate(self) -> float:
        """Answers per second over the schedule's length, or until the last answer when that came later."""
        return self.answered / max(self.elapsed_s, self.duration_s)

    def as_json(self) -> dict[str, Any]:
        """The figures as a JSON object."""
        return {**asdict(self), "achieved_rate": round(self.achieved_rate, 2)}


class _Conn:
    """One keep-alive connection and the request it carries (``scheduled`` is None while idle)."""

    __slots__ = ("buffer", "connecting", "out", "scheduled", "sock")

    def __init__(self, sock: socket.socket, connecting: bool):
        self.sock = sock
        self.connecting = connecting
        self.out = b""  # what is left to write of the request
        self.buffer = bytearray()  # what was read of the answer
        self.scheduled: float | None = None


def run(target: Target, rate: float, duration_s: float, connections: int = DEFAULT_CONNECTIONS,
        drain_s: float = DEFAULT_DRAIN_S) -> OpenLoopResult:
    """Send ``rate`` requests per second to ``target`` for ``duration_s`` seconds over at most ``connections``
    keep-alive connections, wait at most ``drain_s`` more for the answers, and return the figures."""
    if rate <= 0 or duration_s <= 0 or connections < 1:
        raise ValueError("rate and duration must be positive, and connections at least 1")
    return _Run(target, rate, duration_s, connections, drain_s).run()


class _Run:
    """The state of one run; ``run()`` is its loop."""

    def __init__(self, target: Target, rate: float, duration_s: float, connections: int, drain_s: float):
        self.target = target
        self.rate = rate
        self.duration_s = duration_s
        self.max_connections = connections
        self.drain_s = drain_s
        self.request = target.request()
        self.total = max(1, round(rate * duration_s))
        self.selector = selectors.DefaultSelector()
        self.open: set[_Conn] = set()
        self.idle: list[_Conn] = []  # a stack: the most recently used connection is reused first
        self.in_flight: set[_Conn] = set()  # connections carrying a request (connecting, writing or waiting)
        self.waiting: deque[float] = deque()  # scheduled times of due requests that have no connection yet
        self.latencies = array.array("d")
        self.lags = array.array("d")
        self.statuses: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.sent = 0
        self.opened = 0
        self.start = 0.0
        self.last_answer = 0.0

    def run(self) -> OpenLoopResult:
        """Queue each request when it falls due, hand the queue to connections, wait for the next due time or
        for I/O; until every request is answered or the drain deadline passes."""
        cpu = time.process_time()
        self.start = time.monotonic()
        deadline = self.start + self.duration_s + self.drain_s
        due = 0  # the next request to schedule
        try:
            while True:
                now = time.monotonic()
                while due < self.total and self._due(due) <= now:
                    self.waiting.append(self._due(due))
                    due += 1
                self._dispatch()
                if (due == self.total and not self.waiting and not self.in_flight) or now >= deadline:
                    break
                self._wait(min(self._due(due), deadline) if due < self.total else deadline, deadline)
            return self._result(time.monotonic(), time.process_time() - cpu)
        finally:
            for conn in list(self.open):
                self._close(conn)
            self.selector.close()

    def _due(self, index: int) -> float:
        return self.start + index / self.rate

    def _wait(self, wake: float, deadline: float) -> None:
        """Wait until ``wake`` (the next send), or for I/O while requests are in flight. With every connection
        busy, the next due requests cannot go out anyway: only I/O (or the deadline) can change anything, and
        the requests due meanwhile are queued by their scheduled times when the loop comes round."""
        if not self.in_flight:
            self._handle(self.selector.select(0))  # idle connections the server closed, before one is reused
            time.sleep(max(wake - time.monotonic(), 0.0))
            return
        if self.waiting and not self.idle and len(self.open) >= self.max_connections:
            wake = deadline
        self._handle(self.selector.select(max(wake - time.monotonic(), 0.0)))

    def _handle(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, mask in events:
            conn = key.data
            if mask & selectors.EVENT_WRITE:
                self._writable(conn)
            if mask & selectors.EVENT_READ and conn in self.open:
                self._read(conn)

    def _dispatch(self) -> None:
        """Give each waiting request a connection: an idle one, else a new one while the pool has room."""
        while self.waiting:
            if self.idle:
                conn = self.idle.pop()
            elif len(self.open) < self.max_connections:
                opened = self._connect()
                if opened is None:
                    self.waiting.popleft()
                    self.failures["connect"] += 1
                    continue
                conn = opened
            else:
                return
            conn.scheduled = self.waiting.popleft()
            conn.out = self.request
            self.in_flight.add(conn)
            if not conn.connecting:
                self._send(conn)

    def _connect(self) -> _Conn | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((self.target.host, self.target.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return None
        conn = _Conn(sock, connecting=code != 0)
        self.selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        self.open.add(conn)
        self.opened += 1
        return conn

    def _writable(self, conn: _Conn) -> None:
        if conn.connecting:
            if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._fail(conn, "connect")
                return
            conn.connecting = False
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        try:
            written = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError:
            self._fail(conn, "closed")
            return
        conn.out = conn.out[written:]
        if conn.out:
            self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
        assert conn.scheduled is not None
        self.lags.append(time.monotonic() - conn.scheduled)
        self.sent += 1

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if conn in self.in_flight:
                self._fail(conn, "closed")
            else:
                self._close(conn)  # an idle keep-alive connection the server closed
            return
        if conn.scheduled is None or conn.out:
            self._fail(conn, "protocol")  # an answer to nothing, or before the request was written
            return
        conn.buffer += data
        self._answer(conn)

    def _answer(self, conn: _Conn) -> None:
        """Take the answer from the connection's buffer once it is complete."""
        buffer = conn.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._fail(conn, "protocol")
            return
        status = STATUS_LINE.match(buffer)
        length = CONTENT_LENGTH.search(buffer, 0, end + 2)
        if status is None or length is None:
            self._fail(conn, "protocol")
            return
        size = end + 4 + int(length.group(1))
        if len(buffer) < size:
            return
        now = time.monotonic()
        assert conn.scheduled is not None
        self.latencies.append(now - conn.scheduled)
        self.last_answer = now
        key = status.group(1).decode()
        if not key.startswith("2"):
            code = ERROR_CODE.search(buffer, end + 4, size)
            if code:
                key += " " + code.group(1).decode()
        self.statuses[key] += 1
        closing = CONNECTION_CLOSE.search(buffer, 0, end + 2) is not None or len(buffer) > size
        buffer.clear()
        conn.scheduled = None
        self.in_flight.discard(conn)
        if closing:
            self._close(conn)
        else:
            self.idle.append(conn)

    def _fail(self, conn: _Conn, why: str) -> None:
        self.failures[why] += 1
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self.in_flight.discard(conn)
        self.open.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def _result(self, end: float, cpu_s: float) -> OpenLoopResult:
        unanswered = [conn.scheduled for conn in self.in_flight if conn.scheduled is not None] + list(self.waiting)
        latencies = sorted([*self.latencies, *(end - scheduled for scheduled in unanswered)])
        lags = sorted(self.lags)
        answered = len(self.latencies)
        return OpenLoopResult(
            url=self.target.url, offered_rate=self.rate, duration_s=self.duration_s,
            max_connections=self.max_connections, scheduled=self.total, sent=self.sent, answered=answered,
            unanswered=len(unanswered), statuses=dict(self.statuses), failures=dict(self.failures),
            connections_opened=self.opened,
            elapsed_s=round((self.last_answer if answered else end) - self.start, 4),
            p50_ms=_percentile_ms(latencies, 50), p90_ms=_percentile_ms(latencies, 90),
            p99_ms=_percentile_ms(latencies, 99), max_ms=_percentile_ms(latencies, 100),
            send_lag_p50_ms=_percentile_ms(lags, 50), send_lag_p99_ms=_percentile_ms(lags, 99),
            cpu_s=round(cpu_s, 4))


def _percentile_ms(ordered: list[float], percent: float) -> float | None:
    """The nearest-rank percentile of sorted seconds, in milliseconds (None for no values)."""
    if not ordered:
        return None
    rank = max(math.ceil(percent / 100 * len(ordered)), 1)
    return round(ordered[rank - 1] * 1000.0, 4)
