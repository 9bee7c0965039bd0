"""The poll-based selector given to Thespian's TCP transport (system.actor_system.PollSelector)."""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections.abc import Iterator

import pytest

from system.actor_system import PollSelector, tune_transport


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_nothing_is_ready_until_data_arrives(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sel = PollSelector()
    sel.register(a.fileno(), selectors.EVENT_READ)
    assert sel.select(0) == []
    b.sendall(b"x")
    [(key, events)] = sel.select(1.0)
    assert (key.fd, events) == (a.fileno(), selectors.EVENT_READ)


def test_a_writable_socket_is_reported_for_write_only_when_asked(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sel = PollSelector()
    sel.register(a.fileno(), selectors.EVENT_READ)
    assert sel.select(0) == []  # writable, but only reading was asked for
    sel.register(a.fileno(), selectors.EVENT_WRITE)  # a second registration adds to the first
    [(key, events)] = sel.select(0)
    assert (key.fd, events) == (a.fileno(), selectors.EVENT_WRITE)
    b.sendall(b"x")
    [(key, events)] = sel.select(0)
    assert events == selectors.EVENT_READ | selectors.EVENT_WRITE


def test_a_closed_peer_reads_as_ready(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sel = PollSelector()
    sel.register(a.fileno(), selectors.EVENT_READ)
    b.close()
    [(_key, events)] = sel.select(1.0)
    assert events == selectors.EVENT_READ
    assert a.recv(1) == b""


def test_the_timeout_is_honoured() -> None:
    a, b = socket.socketpair()
    try:
        sel = PollSelector()
        sel.register(a.fileno(), selectors.EVENT_READ)
        started = time.monotonic()
        assert sel.select(0.05) == []
        assert time.monotonic() - started >= 0.045
    finally:
        a.close()
        b.close()


def test_a_descriptor_that_is_not_open_raises_ebadf() -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    a.close()
    b.close()
    sel = PollSelector()
    sel.register(fd, selectors.EVENT_READ)
    with pytest.raises(OSError) as raised:
        sel.select(0)
    assert raised.value.errno == errno.EBADF


def test_thespian_transport_uses_it_and_still_finds_bad_descriptors() -> None:
    from thespian.system.transport import TCPTransport

    tune_transport()
    assert TCPTransport.selectors.DefaultSelector is PollSelector
    a, b = socket.socketpair()
    TCPTransport.TCPTransport._check_fd(a.fileno())  # an open descriptor passes
    fd = a.fileno()
    a.close()
    b.close()
    with pytest.raises(OSError):
        TCPTransport.TCPTransport._check_fd(fd)
