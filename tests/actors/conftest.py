"""Actor tests: the real actor classes on Thespian's simpleSystemBase (one process, so ``responses`` can stand in
for the guards), with the test itself behind every peer. Claims about the running system belong in
tests/integration."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from thespian.actors import ActorSystem

from actors.base import AeyonActor
from actors.messages import CallBatch
from actors.messages.control import Peers
from system.config import Settings
from system.logs import log_defs


class Echo(AeyonActor):
    """Stands in for every peer: passes whatever it gets on to the test that attached it."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.test: Any = None

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        if message == "attach":
            self.test = sender
            self.send(sender, "attached")
        elif self.test is not None:
            self.send(self.test, message)


class Entry(AeyonActor):
    """Plays the HTTP shim: forwards ``CallBatch`` to its supervisor and every answer to the test."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.test: Any = None
        self.supervisor: Any = None

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        if isinstance(message, tuple) and message[0] == "attach":
            self.test, self.supervisor = sender, message[1]
        elif isinstance(message, CallBatch):
            self.send(self.supervisor, message)
        elif self.test is not None:
            self.send(self.test, message)


@pytest.fixture
def asys() -> Iterator[ActorSystem]:
    """A private simpleSystemBase, shut down after the test."""
    system = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=log_defs("WARNING"))
    try:
        yield system
    finally:
        system.shutdown()


@pytest.fixture
def peers(asys: ActorSystem) -> Peers:
    """Peers that are all one Echo: whatever an actor sends to a peer reaches the test's ``listen``."""
    echo = asys.createActor(Echo)
    assert asys.ask(echo, "attach", 5) == "attached"
    return Peers(echo, echo, echo, echo, echo, echo)


def make_settings(**overrides: Any) -> Settings:
    """Settings for actor tests: health checks off unless asked, small pools."""
    return attrs.evolve(Settings(disable_health_checks=True, workers_per_guard=2, queue_per_guard=4), **overrides)


def collect(asys: ActorSystem, until: Callable[[list[Any]], bool], timeout: float = 5.0) -> list[Any]:
    """Listen until ``until(received)`` holds; fail after ``timeout`` seconds."""
    received: list[Any] = []
    deadline = time.monotonic() + timeout
    while not until(received):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out; received {received!r}")
        message = asys.listen(min(remaining, 0.1))
        if message is not None:
            received.append(message)
    return received


def of(kind: type, received: list[Any]) -> list[Any]:
    """The received messages of one class."""
    return [m for m in received if isinstance(m, kind)]


def request(asys: ActorSystem, target: Any, message: Any, timeout: float = 5.0) -> Any:
    """Send ``message`` and return the reply that echoes its ``request_id`` (peers' traffic reaches the test too,
    so a plain ``ask`` could return some other message)."""
    asys.tell(target, message)
    received = collect(asys, lambda got: any(getattr(m, "request_id", None) == message.request_id for m in got),
                       timeout)
    return next(m for m in received if getattr(m, "request_id", None) == message.request_id)


def collect_for(asys: ActorSystem, seconds: float) -> list[Any]:
    """Everything that arrives within ``seconds`` (to show that something does not come)."""
    received: list[Any] = []
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        message = asys.listen(remaining)
        if message is not None:
            received.append(message)
    return received
