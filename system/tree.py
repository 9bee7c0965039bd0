"""Drawing the live actor tree: a breadth-first walk that asks each actor to describe itself and its children,
and asks Thespian (``Thespian_StatusReq``) for each actor's message counters.

Plain bookkeeping for the entry that draws it. The walk ends when every actor asked has answered or at its
deadline, whichever comes first; an actor that has not answered by then (stuck in a long call, or gone) is shown
with ``"responsive": false`` and no children, so the tree is always drawn within the deadline.
"""

from __future__ import annotations

import itertools
from typing import Any

from actors.messages.control import ActorDescription


class TreeWalk:
    """One walk of the tree from the root; see the module docstring."""

    _ids = itertools.count(1)

    def __init__(self, root_name: str, root_address: Any, deadline: float):
        self.deadline = deadline
        self._walk = f"tree-{next(self._ids)}"
        self._root = self._node(root_name, root_address)
        self._root_address = root_address
        self._waiting: dict[str, dict[str, Any]] = {}
        self._statuses: dict[str, dict[str, Any]] = {}  # by address text
        self._serial = itertools.count(1)

    def start(self) -> list[tuple[str, Any]]:
        """The first question to send: (request_id, address); send Thespian's status request there too."""
        return [self._ask(self._root, self._root_address)]

    def owns(self, request_id: str) -> bool:
        """True when a description answers this walk."""
        return request_id in self._waiting

    def owns_status(self, address: str) -> bool:
        """True when Thespian's status of this actor is awaited by this walk."""
        return address in self._statuses

    def status(self, address: str, counters: dict[str, Any]) -> None:
        """Thespian's counters for one actor."""
        node = self._statuses.pop(address, None)
        if node is not None:
            node["thespian"] = counters

    def described(self, message: ActorDescription) -> list[tuple[str, Any]]:
        """Take one answer; return the questions to send to its children."""
        node = self._waiting.pop(message.request_id, None)
        if node is None:
            return []
        node.update(actor_class=message.actor_class, address=message.address, pid=message.pid,
                    state=message.state, responsive=True)
        questions = []
        for name, address, *described in message.children:
            child = self._node(name, address, node)
            node["children"].append(child)
            if described:
                # Its parent described it (a worker that may be blocked in a call is never asked).
                child.update(described[0], responsive=True, described_by="parent")
            else:
                questions.append(self._ask(child, address))
        return questions

    @property
    def done(self) -> bool:
        """Every actor asked has answered (and Thespian has, for each)."""
        return not self._waiting and not self._statuses

    def result(self) -> dict[str, Any]:
        """The tree as drawn so far (``GET /v1/actors``)."""
        return self._root

    def _node(self, name: str, address: Any, parent: dict[str, Any] | None = None) -> dict[str, Any]:
        # ``path`` (names from the root, joined by "/") is unique where names are not (every supervisor has a
        # worker-0).
        path = f"{parent['path']}/{name}" if parent is not None else name
        return {"name": name, "path": path, "actor_class": None, "address": str(address), "pid": None, "state": {},
                "responsive": False, "children": []}

    def _ask(self, node: dict[str, Any], address: Any) -> tuple[str, Any]:
        request_id = f"{self._walk}/{next(self._serial)}"
        self._waiting[request_id] = node
        self._statuses[str(address)] = node
        return request_id, address


def thespian_counters(status: Any) -> dict[str, Any]:
    """The parts of a ``Thespian_ActorStatus`` an operator reads: Thespian's own counters (messages received,
    exceptions, ...), and what is pending (messages to send, timers, messages waiting to be handled)."""
    counters = getattr(status, "miscKeyVals", {}) or {}
    return {
        "counters": {str(k): v for k, v in counters.items() if isinstance(v, int | float)},
        "pending_messages": len(getattr(status, "pendingMessages", []) or []),
        "pending_wakeups": len(getattr(status, "pendingWakeups", []) or []),
        "queued_messages": len(getattr(status, "receivedMessages", []) or []),
        "exiting": bool(getattr(status, "exiting", False)),
    }
