"""The actors' common base: dispatch by message class name, and the root's relay unwrapped."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
from typing import Any, ClassVar

from thespian.actors import Actor

from actors.messages.control import ActorDescription, DescribeActor, Relay
from system import logs


class AeyonActor(Actor):
    """Calls ``receiveMsg_<ClassName>(message, sender)`` for the message's class or its nearest base class.

    Like Thespian's ``ActorTypeDispatcher``, but the handler is looked up once per message class rather than by
    walking both class hierarchies on every message (this runs on the per-request path). Unknown messages are
    dropped with a debug line; unexpected exceptions propagate so Thespian's retry and supervision handle them.
    """

    _handlers: ClassVar[dict[type, str | None]]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _own_process(type(self).__name__)

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls._handlers = {}

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        kind = type(message)
        try:
            name = self._handlers[kind]
        except KeyError:
            name = None
            for klass in kind.__mro__:
                candidate = "receiveMsg_" + klass.__name__
                if hasattr(self, candidate):
                    name = candidate
                    break
            self._handlers[kind] = name
        if name is None:
            return self.receiveUnhandled(message, sender)
        return getattr(self, name)(message, sender)

    def receiveUnhandled(self, message: Any, sender: Any) -> Any:
        """Drop a message nobody handles (a late reply, an unknown system message)."""
        self.log.debug("dropped %s from %s", type(message).__name__, sender)
        return None

    def receiveMsg_Relay(self, message: Relay, sender: Any) -> Any:
        return self.receiveMessage(message.inner, message.reply_to)

    def receiveMsg_DescribeActor(self, message: DescribeActor, sender: Any) -> None:
        self.send(sender, ActorDescription(message.request_id, type(self).__name__, os.getpid(),
                                           str(self.myAddress), self.state(), tuple(self.children())))

    def state(self) -> dict[str, Any]:
        """This actor's own state, for the actor tree (JSON-ready)."""
        return {}

    def children(self) -> list[tuple[Any, ...]]:
        """This actor's children for the actor tree: (name, address) to be asked, or (name, address, node) when
        this actor describes the child itself (``{"actor_class", "pid", "state"}``)."""
        return []

    @property
    def log(self) -> logging.Logger:
        """This actor's logger (records travel to Thespian's logging process)."""
        return logging.getLogger("aeyon." + type(self).__name__)


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _own_process(name: str) -> None:
    """Name this actor's process after its class (``ps``, ``top``) and have the kernel kill it when its parent's
    process dies.

    Thespian does not stop a child whose parent is SIGKILLed, nor one still starting when its parent exits (its
    exit request cannot reach it yet): both would live on as orphans after shutdown. Actors run in the main
    thread of a process forked by their parent, so the parent-death signal fires exactly when the parent goes.
    """
    if not multiprocessing.current_process().name.startswith("Actor_"):
        return  # not a process of its own (simpleSystemBase runs actors inside the caller's process)
    parent = multiprocessing.parent_process()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(_PR_SET_NAME, name.encode()[:15] + b"\0")
    if parent is not None and os.getppid() != parent.pid:
        os._exit(0)  # the parent died before the signal was armed
    import urllib3.connectionpool

    logs.level_inherited_loggers(urllib3.connectionpool.log, logging.root)
    # What this process inherited and has built so far stays out of the collector's reach: its children (forked
    # from here) then share those pages instead of copying them when a collection walks the objects.
    gc.freeze()
