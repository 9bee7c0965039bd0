"""HttpServer on real loopback sockets, no actors: the test plays the owner (the HttpShim) by hand.

Most tests drive the owner's loop one step at a time from the test thread (``Owner``) while raw sockets play the
clients, so every ordering is deterministic; loopback delivers a ``send`` before it returns, so what a client sent
is in the server's socket by the time the owner looks. Tests that need blocking clients (``http.client``) run the
same loop in one background thread (``EchoLoop``). Time is a ``FakeClock`` the test advances; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from system.http_server import HttpLimits, HttpRequest, HttpServer

WAIT_S = 5.0  # the deadline of every wait; a healthy run never comes near it
HOST = "127.0.0.1"

# Small limits, so that every limit is quick to reach; each test overrides what it pins down.
SMALL_LIMITS: dict[str, Any] = {
    "max_body_bytes": 1000,
    "max_header_bytes": 1024,
    "idle_timeout_s": 5.0,
    "header_timeout_s": 2.0,
    "body_timeout_s": 3.0,
    "write_timeout_s": 4.0,
}

Headers = list[tuple[str, str]]
App = Callable[[HttpRequest, int], tuple[int, Headers, bytes]]


def error_body(status: int, code: str, message: str) -> tuple[Headers, bytes]:
    """The owner's error body: what the server sends for requests the application never sees."""
    return [("Content-Type", "application/json")], json.dumps(
        {"status": status, "code": code, "message": message}).encode()


def get(path: str, *extra: str) -> bytes:
    """A GET request head, with any extra header lines."""
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: test", *extra, "", ""]).encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    """A POST request with a Content-Length body."""
    head = "\r\n".join([f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}", *extra, "", ""])
    return head.encode() + body


class FakeClock:
    """A monotonic clock moved by hand, so that deadlines pass exactly when a test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


class Response:
    """One parsed HTTP response as the client received it."""

    def __init__(self, status_line: str, headers: Headers, body: bytes):
        self.status_line = status_line
        self.status = int(status_line.split(" ", 2)[1])
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        """The value of a header (names compared case-insensitively), or None."""
        values = [value for key, value in self.headers if key == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class RawClient:
    """A client on a raw socket that can send anything and parses responses itself.

    ``pump``, when set, is called while the client waits for bytes: it lets the test thread run the owner's loop
    between reads (a slow reader that the server must feed through EPOLLOUT).
    """

    def __init__(self, address: tuple[str, int], rcvbuf: int | None = None, chunk: int = 65536):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT_S)
        self.sock.connect(address)
        self.buf = bytearray()
        self.chunk = chunk
        self.pump: Callable[[], None] | None = None

    def send(self, data: bytes) -> None:
        """Send all of ``data``."""
        self.sock.sendall(data)

    def readable(self) -> bool:
        """True when bytes (or the end of the stream) wait to be read."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def _recv(self) -> bytes:
        deadline = time.monotonic() + WAIT_S
        while not select.select([self.sock], [], [], 0.002 if self.pump else WAIT_S)[0]:
            if self.pump is not None:
                self.pump()
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the server")
        return self.sock.recv(self.chunk)

    def _fill(self) -> None:
        data = self._recv()
        if not data:
            raise EOFError(f"the server closed the connection; unparsed: {bytes(self.buf[:200])!r}")
        self.buf += data

    def read_until(self, marker: bytes) -> bytes:
        """Everything up to and including ``marker``."""
        while (end := self.buf.find(marker)) < 0:
            self._fill()
        end += len(marker)
        data = bytes(self.buf[:end])
        del self.buf[:end]
        return data

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes."""
        while len(self.buf) < size:
            self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def read_available(self) -> int:
        """Read, without waiting, whatever the kernel already holds; return how many bytes that was."""
        before = len(self.buf)
        while self.readable():
            data = self.sock.recv(self.chunk)
            if not data:
                break
            self.buf += data
        return len(self.buf) - before

    def read_response(self, has_body: bool = True) -> Response:
        """One response; its body is read by Content-Length (none when ``has_body`` is False, as for HEAD)."""
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *lines = head[:-4].split("\r\n")
        headers: Headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.lower(), value.strip()))
        response = Response(status_line, headers, b"")
        length = response.header("content-length")
        if has_body and length is not None:
            response.body = self.read_exact(int(length))
        return response

    def assert_closed_by_server(self) -> None:
        """Wait for the server to close the connection: end of stream or reset, with no bytes left unread."""
        try:
            data = self._recv()
        except ConnectionResetError:
            data = b""
        assert not self.buf and not data, f"unexpected bytes before the close: {bytes(self.buf) + data!r}"

    def reset(self) -> None:
        """Close abortively (SO_LINGER 0): the server's socket sees a reset, not an orderly end."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()


class Owner:
    """The owner's loop (HttpShim's job) run one step at a time from the test thread."""

    def __init__(self, server: HttpServer, clients: list[RawClient]):
        self.server = server
        self.requests: list[HttpRequest] = []
        self._clients = clients

    def step(self, timeout: float = 0.0) -> None:
        """Wait up to ``timeout`` for the epoll fd, then let the server handle what is ready."""
        if select.select([self.server.fileno()], [], [], timeout)[0]:
            self.requests.extend(self.server.poll())

    def until(self, condition: Callable[[], object], what: str, timeout: float = WAIT_S) -> None:
        """Run the loop until ``condition()`` holds; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.step(0.005)

    def settle(self) -> list[HttpRequest]:
        """Handle everything the sockets already hold (clients' sends have landed); return the requests so far."""
        deadline = time.monotonic() + WAIT_S
        while select.select([self.server.fileno()], [], [], 0)[0]:
            assert time.monotonic() < deadline, "the epoll fd never went quiet"
            self.requests.extend(self.server.poll())
        return self.requests

    def next_request(self) -> HttpRequest:
        """The next complete request, waiting for it."""
        self.until(lambda: self.requests, "a request")
        return self.requests.pop(0)

    def connect(self, **kwargs: Any) -> RawClient:
        """A new client, returned once the server has accepted it; while it waits for bytes, the loop runs."""
        count = self.server.connection_count
        client = RawClient(self.server.address, **kwargs)
        client.pump = self.step
        self._clients.append(client)
        self.until(lambda: self.server.connection_count > count, "the server to accept a connection")
        return client


def echo(request: HttpRequest, count: int) -> tuple[int, Headers, bytes]:
    """The echo app: 200 with what the request was, and how many requests the loop has answered."""
    body = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "body_len": len(request.body),
        "count": count,
        "conn_id": request.conn_id,
    }
    return 200, [("Content-Type", "application/json")], json.dumps(body).encode()


class EchoLoop(threading.Thread):
    """The owner's loop in a background thread; only this thread touches the server until ``stop()``."""

    def __init__(self, server: HttpServer, app: App = echo):
        super().__init__(name="http-server-owner", daemon=True)
        self.server = server
        self.app = app
        self.count = 0
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        """Wait on the epoll fd, answer every request (pipelined ones in order), expire deadlines."""
        try:
            while not self._stopping.is_set():
                if select.select([self.server.fileno()], [], [], 0.02)[0]:
                    pending = self.server.poll()
                    while pending:
                        request = pending.pop(0)
                        self.count += 1
                        status, headers, body = self.app(request, self.count)
                        self.server.respond(request.conn_id, status, headers, body)
                        pending.extend(self.server.take_ready())
                self.server.expire()
        except BaseException as exc:  # reported by stop(), in the test thread
            self.error = exc

    def stop(self) -> None:
        """Stop the loop and re-raise anything it raised."""
        self._stopping.set()
        self.join(WAIT_S)
        assert not self.is_alive(), "the owner loop did not stop"
        if self.error is not None:
            raise self.error


class Harness:
    """Builds servers, owners and clients for one test, and closes all of them afterwards."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.servers: list[HttpServer] = []
        self.clients: list[RawClient] = []
        self.loops: list[EchoLoop] = []

    def server(self, **limits: Any) -> HttpServer:
        """A listening server on an ephemeral loopback port, with SMALL_LIMITS overridden by ``limits``."""
        server = HttpServer(HttpLimits(**{**SMALL_LIMITS, **limits}), error_body, clock=self.clock)
        self.servers.append(server)
        server.listen(HOST, 0)
        return server

    def owner(self, **limits: Any) -> Owner:
        """A server driven step by step from the test thread."""
        return Owner(self.server(**limits), self.clients)

    def loop(self, app: App = echo, **limits: Any) -> EchoLoop:
        """A server whose owner loop runs in a background thread."""
        loop = EchoLoop(self.server(**limits), app)
        self.loops.append(loop)
        loop.start()
        return loop

    def client(self, address: tuple[str, int], **kwargs: Any) -> RawClient:
        """A raw client, closed at teardown."""
        client = RawClient(address, **kwargs)
        self.clients.append(client)
        return client

    def close(self) -> None:
        """Stop the loops, then close every client and server."""
        errors = []
        for loop in self.loops:
            try:
                loop.stop()
            except BaseException as exc:
                errors.append(exc)
        for client in self.clients:
            client.close()
        for server in self.servers:
            server.close()
        if errors:
            raise errors[0]


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


def _http(address: tuple[str, int]) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(address[0], address[1], timeout=WAIT_S)


# -- requests and responses -------------------------------------------------------------------------------------


def test_a_get_request_carries_its_fields_and_the_response_carries_status_length_date_and_our_headers(
        harness: Harness) -> None:
    owner = harness.owner()
    client = owner.connect()
    client.send(get("/a%20b/c?x=1&y=%20", "X-Trace: abc", "x-multi: 1", "X-Multi: 2"))

    request = owner.next_request()
    assert (request.method, request.path, request.query) == ("GET", "/a b/c", "x=1&y=%20")
    assert request.headers == {"host": "test", "x-trace": "abc", "x-multi": "1, 2"}
    assert request.body == b""
    assert request.client_ip == "127.0.0.1"
    assert request.received_at == harness.clock.now

    assert owner.server.respond(request.conn_id, 200, [("Content-Type", "application/json"), ("X-Custom", "yes")],
                                b'{"ok": true}')
    response = client.read_response()
    assert response.status_line == "HTTP/1.1 200 OK"
    assert response.header("content-length") == "12"
    assert response.header("content-type") == "application/json"
    assert response.header("x-custom") == "yes"
    date = response.header("date")
    assert date is not None and abs(parsedate_to_datetime(date).timestamp() - time.time()) < 60
    assert response.body == b'{"ok": true}'
    # Answered once: a second answer to the same request is refused, not sent.
    assert not owner.server.respond(request.conn_id, 200, [], b"again")


def test_a_post_body_with_content_length_reaches_the_application_and_the_reason_phrase_matches_the_status(
        harness: Harness) -> None:
    owner = harness.owner()
    client = owner.connect()
    client.send(post("/v1/things", b'{"k": "v"}', "Content-Type: application/json"))

    request = owner.next_request()
    assert (request.method, request.path, request.query) == ("POST", "/v1/things", "")
    assert request.body == b'{"k": "v"}'
    assert request.headers["content-length"] == "10"
    assert request.headers["content-type"] == "application/json"

    assert owner.server.respond(request.conn_id, 201, [], b"")
    response = client.read_response()
    assert response.status_line == "HTTP/1.1 201 Created"
    assert response.header("content-length") == "0"


def test_http_client_get_and_post_are_answered_through_the_owner_loop(harness: Harness) -> None:
    loop = harness.loop()
    conn = _http(loop.server.address)
    try:
        conn.request("GET", "/v1/health?verbose=1")
        response = conn.getresponse()
        body = response.read()
        assert (response.status, response.reason) == (200, "OK")
        assert response.getheader("Content-Length") == str(len(body))
        assert response.getheader("Content-Type") == "application/json"
        assert response.getheader("Date")
        assert json.loads(body) | {"conn_id": 0} == {
            "method": "GET", "path": "/v1/health", "query": "verbose=1", "body_len": 0, "count": 1, "conn_id": 0}

        conn.request("POST", "/v1/orchestrate", body=b"x" * 300, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        echoed = json.loads(response.read())
        assert response.status == 200
        assert (echoed["method"], echoed["path"], echoed["body_len"], echoed["count"]) == (
            "POST", "/v1/orchestrate", 300, 2)
    finally:
        conn.close()


# -- keep-alive and pipelining ----------------------------------------------------------------------------------


def test_keep_alive_answers_several_requests_on_one_connection_in_order(harness: Harness) -> None:
    loop = harness.loop()
    conn = _http(loop.server.address)
    try:
        seen = []
        for i in range(4):
            conn.request("GET", f"/k/{i}")
            response = conn.getresponse()
            assert response.status == 200
            seen.append(json.loads(response.read()))
    finally:
        conn.close()
    assert [s["path"] for s in seen] == ["/k/0", "/k/1", "/k/2", "/k/3"]
    assert [s["count"] for s in seen] == [1, 2, 3, 4]
    assert len({s["conn_id"] for s in seen}) == 1, "each request should reuse the one connection"


def test_connection_close_from_the_client_closes_after_the_answer(harness: Harness) -> None:
    owner = harness.owner()
    client = owner.connect()
    client.send(get("/first"))
    first = owner.next_request()
    assert owner.server.respond(first.conn_id, 200, [], b"1")
    assert client.read_response().header("connection") is None

    client.send(get("/last", "Connection: close"))
    last = owner.next_request()
    assert last.headers["connection"] == "close"
    assert owner.server.respond(last.conn_id, 200, [], b"2")
    response = client.read_response()
    assert (response.status, response.body) == (200, b"2")
    assert response.header("connection") == "close"
    client.assert_closed_by_server()
    client.close()
    owner.until(lambda: owner.server.connection_count == 0, "the server to drop the closed connection")


def test_pipelined_requests_are_handed_out_one_at_a_time_and_answered_in_order(harness: Harness) -> None:
    owner = harness.owner()
    client = owner.connect()
    client.send(get("/p0") + get("/p1") + post("/p2", b"two"))  # one sendall, three requests

    assert [r.path for r in owner.settle()] == ["/p0"], "only the first request goes to the application"
    first = owner.requests.pop()
    assert owner.server.poll() == [] and owner.server.take_ready() == []

    assert owner.server.respond(first.conn_id, 200, [], b"answer 0")
    second = owner.server.take_ready()
    assert [r.path for r in second] == ["/p1"]
    assert owner.server.take_ready() == []

    assert owner.server.respond(second[0].conn_id, 200, [], b"answer 1")
    third = owner.server.take_ready()
    assert [(r.path, r.body) for r in third] == [("/p2", b"two")]
    assert owner.server.respond(third[0].conn_id, 200, [], b"answer 2")

    assert [client.read_response().body for _ in range(3)] == [b"answer 0", b"answer 1", b"answer 2"]
    assert owner.settle() == []


# -- body limits and Expect: 100-continue -----------------------------------------------------------------------


@pytest.mark.parametrize("send_body", [False, True], ids=["body-withheld", "body-sent"])
def test_a_content_length_over_the_limit_is_refused_with_413_before_the_body_is_read(
        harness: Harness, send_body: bool) -> None:
    owner = harness.owner(max_body_bytes=1000)
    client = owner.connect()
    head = b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1001\r\n\r\n"
    client.send(head + (b"x" * 1001 if send_body else b""))

    response = client.read_response()  # arrives although the client (body-withheld) never sent a body byte
    assert response.status == 413
    assert response.header("content-type") == "application/json"
    assert response.json()["code"] == "payload_too_large"
    assert response.header("connection") == "close"
    client.assert_closed_by_server()
    assert owner.settle() == [], "the application never sees a refused request"
    client.close()
    owner.until(lambda: owner.server.connection_count == 0, "the server to drop the refused connection")


def test_a_body_of_exactly_the_limit_is_accepted(harness: Harness) -> None:
    owner = harness.owner(max_body_bytes=1000)
    client = owner.connect()
    client.send(post("/upload", b"y" * 1000))
    assert owner.next_request().body == b"y" * 1000


def _chunked(*chunks: bytes) -> bytes:
    head = b"POST /stream HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


def test_a_chunked_body_within_the_limit_is_joined(harness: Harness) -> None:
    owner = harness.owner(max_body_bytes=1000)
    client = owner.connect()
    client.send(_chunked(b"a" * 400, b"b" * 600))
    request = owner.next_request()
    assert request.body == b"a" * 400 + b"b" * 600
    assert owner.server.respond(request.conn_id, 200, [], b"ok")
    assert client.read_response().body == b"ok"


def test_a_chunked_body_over_the_limit_gets_413_and_the_connection_closes(harness: Harness) -> None:
    owner = harness.owner(max_body_bytes=1000)
    client = owner.connect()
    client.send(_chunked(b"a" * 600, b"b" * 600))
    response = client.read_response()
    assert response.status == 413
    assert response.json()["code"] == "payload_too_large"
    client.assert_closed_by_server()
    assert owner.settle() == []


def test_expect_100_continue_with_an_acceptable_length_gets_100_then_the_body_is_accepted(harness: Harness) -> None:
    owner = harness.owner(max_body_bytes=1000)
    client = owner.connect()
    client.send(b"POST /up HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    owner.settle()

    interim = client.read_response(has_body=False)
    assert interim.status == 100
    assert interim.status_line.startswith("HTTP/1.1 100")
    assert owner.requests == [], "no request before its body"

    client.send(b"hello")
    request = owner.next_request()
    assert request.body == b"hello"
    assert owner.server.respond(request.conn_id, 200, [], b"done")
    final = client.read_response()
    assert (final.status, final.body) == (200, b"done")


def test_expect_100_continue_with_a_too_large_length_gets_413_and_no_100(harness: Harness) -> None:
    owner = harness.owner(max_body_bytes=1000)
    client = owner.connect()
    client.send(b"POST /up HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 1001\r\n\r\n")
    response = client.read_response()  # the first thing on the wire
    assert response.status == 413
    client.assert_closed_by_server()


# -- malformed requests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"NOT AN HTTP REQUEST\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nno colon in this header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nContent-Length: ten\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: test\r\nBad Name: x\r\n\r\n",
    ],
    ids=["garbage-line", "header-without-colon", "bad-content-length", "space-in-header-name"],
)
def test_malformed_http_gets_400_json_from_error_body_and_the_connection_closes(
        harness: Harness, data: bytes) -> None:
    owner = harness.owner()
    client = owner.connect()
    client.send(data)
    response = client.read_response()
    assert response.status_line == "HTTP/1.1 400 Bad Request"
    assert response.header("content-type") == "application/json"
    assert response.json()["code"] == "bad_request"
    assert response.json()["status"] == 400
    client.assert_closed_by_server()
    assert owner.settle() == []


def test_a_head_still_growing_past_max_header_bytes_gets_431_and_the_connection_closes(harness: Harness) -> None:
    owner = harness.owner(max_header_bytes=1024)
    client = owner.connect()
    client.send(b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 2000)  # the head never ends
    response = client.read_response()
    assert response.status == 431
    assert response.json()["code"] == "request_header_too_large"
    client.assert_closed_by_server()


def test_a_complete_head_larger_than_max_header_bytes_is_refused(harness: Harness) -> None:
    owner = harness.owner(max_header_bytes=1024)
    client = owner.connect()
    client.send(get("/", "X-Big: " + "a" * 8000))  # 8 KB head, all of it in one send
    assert owner.settle() == [], "an 8 KB head reached the application past a 1 KB limit"
    response = client.read_response()
    assert response.status in (400, 431)
    client.assert_closed_by_server()


# -- slow clients and deadlines ---------------------------------------------------------------------------------


def test_a_partial_head_gets_408_after_header_timeout_and_the_connection_closes(harness: Harness) -> None:
    owner = harness.owner(header_timeout_s=2.0, idle_timeout_s=100.0)
    server, clock = owner.server, harness.clock
    client = owner.connect()
    client.send(b"GET /slow HTTP/1.1\r\nHost: te")  # and then nothing
    owner.settle()

    clock.advance(1.9)
    server.expire()
    assert server.connection_count == 1 and not client.readable()

    clock.advance(0.2)
    server.expire()
    response = client.read_response()
    assert response.status_line == "HTTP/1.1 408 Request Timeout"
    assert response.json()["code"] == "request_timeout"
    client.assert_closed_by_server()


def test_an_idle_keep_alive_connection_closes_silently_after_idle_timeout(harness: Harness) -> None:
    owner = harness.owner(idle_timeout_s=5.0, header_timeout_s=1.0)
    server, clock = owner.server, harness.clock
    used = owner.connect()
    used.send(get("/once"))
    request = owner.next_request()
    assert server.respond(request.conn_id, 200, [], b"ok")
    assert used.read_response().body == b"ok"
    never_spoke = owner.connect()

    clock.advance(4.9)
    server.expire()
    assert server.connection_count == 2

    clock.advance(0.2)
    server.expire()
    assert server.connection_count == 0
    used.assert_closed_by_server()  # no 408: nothing was asked
    never_spoke.assert_closed_by_server()


def test_a_partial_body_gets_408_after_body_timeout(harness: Harness) -> None:
    owner = harness.owner(header_timeout_s=1.0, body_timeout_s=3.0, idle_timeout_s=100.0)
    server, clock = owner.server, harness.clock
    client = owner.connect()
    client.send(b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc")
    owner.settle()

    clock.advance(2.9)  # past the header timeout: the body deadline has replaced it
    server.expire()
    assert server.connection_count == 1 and not client.readable()

    clock.advance(0.2)
    server.expire()
    response = client.read_response()
    assert response.status == 408
    assert response.json()["code"] == "request_timeout"
    client.assert_closed_by_server()
    assert owner.requests == []


def test_a_connection_whose_request_is_with_the_application_is_not_expired(harness: Harness) -> None:
    owner = harness.owner()
    server, clock = owner.server, harness.clock
    client = owner.connect()
    client.send(get("/long"))
    request = owner.next_request()

    clock.advance(1000.0)
    server.expire()
    assert server.connection_count == 1
    assert server.respond(request.conn_id, 200, [], b"late but fine")
    assert client.read_response().body == b"late but fine"


# -- clients that go away ---------------------------------------------------------------------------------------


def test_respond_returns_false_when_the_client_reset_the_connection_while_its_request_was_with_the_application(
        harness: Harness) -> None:
    owner = harness.owner()
    server = owner.server
    client = owner.connect()
    client.send(get("/abandoned"))
    request = owner.next_request()

    client.reset()
    owner.until(lambda: server.connection_count == 0, "the server to notice the reset")
    assert server.respond(request.conn_id, 200, [], b"nobody listens") is False


def test_respond_returns_false_when_the_client_closed_the_connection_while_its_request_was_with_the_application(
        harness: Harness) -> None:
    owner = harness.owner()
    server = owner.server
    client = owner.connect()
    client.send(get("/abandoned"))
    request = owner.next_request()

    client.close()  # an orderly close, as requests/urllib3/browsers do when they give up
    owner.until(lambda: server.connection_count == 0, "the server to notice the close", timeout=1.0)
    assert server.respond(request.conn_id, 200, [], b"nobody listens") is False


# -- many connections -------------------------------------------------------------------------------------------


def test_three_hundred_concurrent_clients_with_three_keep_alive_requests_each_are_all_answered(
        harness: Harness) -> None:
    clients, rounds = 300, 3
    loop = harness.loop()
    all_connected = threading.Barrier(clients, timeout=4 * WAIT_S)
    results: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    failures: list[BaseException] = []

    def run_client(i: int) -> None:
        conn = http.client.HTTPConnection(HOST, loop.server.address[1], timeout=4 * WAIT_S)
        try:
            conn.connect()
            all_connected.wait()  # every connection is open at once before any request is sent
            answers = []
            for j in range(rounds):
                conn.request("POST", f"/c/{i}/{j}?i={i}", body=b"z" * j)
                response = conn.getresponse()
                answers.append((response.status, json.loads(response.read())))
            results[i] = answers
        except BaseException as exc:
            failures.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run_client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(6 * WAIT_S)
    assert not failures, failures[:3]
    assert sorted(results) == list(range(clients))
    for i, answers in results.items():
        assert [status for status, _ in answers] == [200] * rounds
        assert [(a["path"], a["query"], a["body_len"]) for _, a in answers] == [
            (f"/c/{i}/{j}", f"i={i}", j) for j in range(rounds)]
        assert len({a["conn_id"] for _, a in answers}) == 1
    assert len({answers[0][1]["conn_id"] for answers in results.values()}) == clients
    assert sorted(a["count"] for answers in results.values() for _, a in answers) == list(
        range(1, clients * rounds + 1))


def test_a_connection_over_max_connections_is_closed_by_the_server(harness: Harness) -> None:
    owner = harness.owner(max_connections=5)
    server = owner.server
    admitted = [owner.connect() for _ in range(5)]

    sixth = harness.client(server.address)
    owner.until(sixth.readable, "the server to turn the sixth connection away")
    sixth.assert_closed_by_server()
    assert server.connection_count == 5

    for i, client in enumerate(admitted):  # the five admitted are unharmed
        client.send(get(f"/n/{i}"))
        request = owner.next_request()
        assert server.respond(request.conn_id, 200, [], str(i).encode())
        assert client.read_response().body == str(i).encode()

    admitted[0].close()  # a freed place is given to the next client
    owner.until(lambda: server.connection_count == 4, "the server to drop the closed connection")
    owner.connect()
    assert server.connection_count == 5


# -- large responses, HEAD and 204 ------------------------------------------------------------------------------

BIG = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # 5 MiB with a pattern, so a misplaced byte shows


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
def test_a_large_response_to_a_slow_reader_is_delivered_completely(harness: Harness, close: bool) -> None:
    owner = harness.owner()
    server = owner.server
    client = owner.connect(rcvbuf=16384, chunk=16384)
    client.send(get("/big"))
    request = owner.next_request()

    assert server.respond(request.conn_id, 200, [("Content-Type", "application/octet-stream")], BIG, close=close)
    # The kernel could not take 5 MiB at once: the rest waits in the server for EPOLLOUT.
    assert client.read_available() < len(BIG)

    response = client.read_response()  # 16 KiB at a time, the owner loop running between the reads
    assert response.header("content-length") == str(len(BIG))
    assert response.body == BIG
    if close:
        client.assert_closed_by_server()
    else:
        client.send(get("/after"))
        after = owner.next_request()
        assert server.respond(after.conn_id, 200, [], b"small")
        assert client.read_response().body == b"small"


def test_a_keep_alive_connection_still_writing_its_response_is_not_closed_as_idle(harness: Harness) -> None:
    owner = harness.owner(idle_timeout_s=1.0, write_timeout_s=30.0)
    server = owner.server
    client = owner.connect(rcvbuf=16384, chunk=16384)
    client.send(get("/big"))
    request = owner.next_request()
    assert server.respond(request.conn_id, 200, [], BIG)

    harness.clock.advance(2.0)  # past idle_timeout_s, well within write_timeout_s
    server.expire()
    assert server.connection_count == 1, "a connection with a response in flight is not idle"
    assert client.read_response().body == BIG


def test_a_head_request_gets_the_headers_without_the_body_and_the_connection_stays_usable(
        harness: Harness) -> None:
    owner = harness.owner()
    server = owner.server
    client = owner.connect()
    client.send(b"HEAD /health HTTP/1.1\r\nHost: test\r\n\r\n")
    request = owner.next_request()
    assert request.method == "HEAD"

    # The application answers HEAD as it answers GET (the HttpShim's health routes do).
    assert server.respond(request.conn_id, 200, [("Content-Type", "application/json")], b'{"status": "ok"}')
    response = client.read_response(has_body=False)
    assert response.status == 200
    assert response.header("content-length") in (None, "16")

    client.send(get("/health"))  # had any body bytes been sent, they would be read as this response's head
    follow = owner.next_request()
    assert server.respond(follow.conn_id, 200, [], b'{"status": "ok"}')
    assert client.read_response().status_line == "HTTP/1.1 200 OK"


def test_after_a_head_request_a_malformed_one_on_the_same_connection_still_gets_its_400(harness: Harness) -> None:
    # Found by bin/fuzz: the HEAD's "no body" stuck to the connection, and the 400's body could not be sent.
    owner = harness.owner()
    client = owner.connect()
    client.send(b"HEAD /health HTTP/1.1\r\nHost: test\r\n\r\n")
    request = owner.next_request()
    assert owner.server.respond(request.conn_id, 200, [], b'{"status": "ok"}')
    assert client.read_response(has_body=False).status == 200
    client.send(b"GET /health HTTP/1.1\r\nHost: test\r\nNoColon\r\n\r\n")
    response = client.read_response()
    assert response.status_line == "HTTP/1.1 400 Bad Request"
    assert response.json()["code"] == "bad_request"


def test_a_head_request_answered_with_no_body_keeps_the_connection(harness: Harness) -> None:
    owner = harness.owner()
    server = owner.server
    client = owner.connect()
    client.send(b"HEAD /health HTTP/1.1\r\nHost: test\r\n\r\n")
    request = owner.next_request()
    assert server.respond(request.conn_id, 200, [("X-Seen", "head")], b"")
    response = client.read_response(has_body=False)
    assert (response.status, response.header("x-seen")) == (200, "head")

    client.send(get("/next"))
    follow = owner.next_request()
    assert server.respond(follow.conn_id, 200, [], b"next")
    assert client.read_response().body == b"next"


def test_a_204_response_has_no_body_and_no_content_length(harness: Harness) -> None:
    owner = harness.owner()
    server = owner.server
    client = owner.connect()
    client.send(b"DELETE /v1/services/x HTTP/1.1\r\nHost: test\r\n\r\n")
    request = owner.next_request()
    # A body handed in with a 204 is dropped, not sent.
    assert server.respond(request.conn_id, 204, [("X-Request-ID", "r1")], b"must not be sent")
    response = client.read_response(has_body=False)
    assert response.status_line == "HTTP/1.1 204 No Content"
    assert response.header("content-length") is None
    assert response.header("x-request-id") == "r1"
    assert response.header("date") is not None

    client.send(get("/next"))  # stray body bytes would corrupt this response
    follow = owner.next_request()
    assert server.respond(follow.conn_id, 200, [], b"next")
    follow_response = client.read_response()
    assert (follow_response.status_line, follow_response.body) == ("HTTP/1.1 200 OK", b"next")


# -- shutdown ---------------------------------------------------------------------------------------------------


def test_close_closes_every_connection_and_the_listener(harness: Harness) -> None:
    owner = harness.owner()
    server = owner.server
    address = server.address
    idle = owner.connect()
    busy = owner.connect()
    busy.send(get("/in-flight"))
    request = owner.next_request()

    server.close()
    idle.pump = busy.pump = None  # there is no loop left to run
    assert server.connection_count == 0
    idle.assert_closed_by_server()
    busy.assert_closed_by_server()
    assert server.respond(request.conn_id, 200, [], b"too late") is False
    with contextlib.closing(socket.socket()) as late, pytest.raises(ConnectionRefusedError):
        late.settimeout(WAIT_S)
        late.connect(address)
