"""Where each guard's supervisor runs: on the leader, or on a member that joined its convention (multi-node).

A member joins with ``aeyon serve --join HOST:PORT`` and says which guards it may host (its capabilities; ``*`` for
any). The leader's root keeps a ``Placement`` and asks it where a guard goes:

- a guard goes to the member, among those that may host it, with the fewest guards (ties: by name), so guards
  spread over the members that may take them;
- with no such member it stays on the leader, which can always host every guard (a lost member never leaves a guard
  without a place);
- when a member joins, the guards on the leader that it may host move to it (``moves``), and guards move from
  a member with two or more guards more than another that may host them, so members that join one after the
  other share the guards (a move fails no request: the old supervisor answers what it took, then stops);
- when a member is lost, its guards are placed again by the same rule (on another member, or on the leader).

Pure: no actors, no clock; the root applies what it says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

LEADER = "leader"
NODE_CAPABILITY = "aeyon.node"
GUARDS_CAPABILITY = "aeyon.guards"
ANY_GUARD = "*"


@attrs.frozen
class Member:
    """A member of the convention: its name, its admin's address (opaque here) and the guards it may host
    (``None``: any)."""

    name: str
    admin: Any
    guards: frozenset[str] | None

    def may_host(self, service: str) -> bool:
        """True when this member may host the guard named ``service``."""
        return self.guards is None or service in self.guards

    @classmethod
    def from_capabilities(cls, admin: Any, capabilities: Mapping[str, Any]) -> Member | None:
        """The member an actor system describes, or None when it is no Aeyon member (e.g. a Gateway client)."""
        name = capabilities.get(NODE_CAPABILITY)
        if not isinstance(name, str) or not name or name == LEADER:
            return None
        return cls(name, admin, parse_guards(str(capabilities.get(GUARDS_CAPABILITY, ANY_GUARD))))


def parse_guards(text: str) -> frozenset[str] | None:
    """``"*"`` (or empty) -> None (any guard); ``"tokenguard, trustguard"`` -> those names."""
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    return None if not names or ANY_GUARD in names else names


def format_guards(guards: frozenset[str] | None) -> str:
    """The inverse of ``parse_guards``."""
    return ANY_GUARD if guards is None else ",".join(sorted(guards))


class Placement:
    """The live members and the node of every placed guard; see the module docstring."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.nodes: dict[str, str] = {}  # service -> node name (LEADER or a member's name)

    def join(self, member: Member) -> None:
        """A member joined (or rejoined, perhaps with new capabilities)."""
        self.members[member.name] = member

    def lost(self, admin: Any) -> Member | None:
        """The member whose admin is ``admin`` left or died: forget it and return it (None if unknown)."""
        for name, member in list(self.members.items()):
            if member.admin == admin:
                del self.members[name]
                return member
        return None

    def member_at(self, admin: Any) -> Member | None:
        """The member whose admin is ``admin``."""
        return next((m for m in self.members.values() if m.admin == admin), None)

    def load(self, node: str) -> int:
        """How many guards are placed on ``node``."""
        return sum(1 for n in self.nodes.values() if n == node)

    def choose(self, service: str) -> str:
        """Where ``service`` should go now (see the module docstring); does not record it."""
        candidates = [m for m in self.members.values() if m.may_host(service)]
        if not candidates:
            return LEADER
        return min(candidates, key=lambda m: (self.load(m.name) - (self.nodes.get(service) == m.name), m.name)).name

    def place(self, service: str, node: str) -> None:
        """Record that ``service`` now runs on ``node``."""
        self.nodes[service] = node

    def forget(self, service: str) -> None:
        """``service`` was unregistered."""
        self.nodes.pop(service, None)

    def node_of(self, service: str) -> str:
        """Where ``service`` runs (the leader when it was never placed)."""
        return self.nodes.get(service, LEADER)

    def on_member(self, name: str) -> list[str]:
        """The services placed on the member called ``name``."""
        return sorted(s for s, n in self.nodes.items() if n == name)

    def moves(self, services: Iterable[str]) -> list[tuple[str, str]]:
        """(service, member) for the guards to move now that a member joined, recorded as their new places:
        each of ``services`` on the leader that a member may host, spread as ``choose`` spreads them; then, while
        a member hosts at least two guards more than another member that may host one of them, that guard (the
        first by name) moves to the less loaded member, so members that join one after the other share the
        guards."""
        out = []
        for service in sorted(services):
            if self.node_of(service) != LEADER:
                continue
            node = self.choose(service)
            if node != LEADER:
                self.place(service, node)
                out.append((service, node))
        # Balancing converges: each move lowers the sum of squared loads.
        while True:
            move = self._balancing_move()
            if move is None:
                return out
            self.place(*move)
            out = [(s, n) for s, n in out if s != move[0]] + [move]

    def _balancing_move(self) -> tuple[str, str] | None:
        members = sorted(self.members.values(), key=lambda m: (-self.load(m.name), m.name))
        for busy in members:
            for service in self.on_member(busy.name):
                for idle in sorted(members, key=lambda m: (self.load(m.name), m.name)):
                    if idle.may_host(service) and self.load(busy.name) - self.load(idle.name) >= 2:
                        return service, idle.name
        return None

    def requirements(self, node: str) -> dict[str, str] | None:
        """``targetActorRequirements`` for an actor created on ``node`` (None: where the creator runs)."""
        return None if node == LEADER else {NODE_CAPABILITY: node}

    def describe(self) -> dict[str, Any]:
        """For inspection: members with what they may host and what they host."""
        return {
            "members": [{"name": m.name, "guards": format_guards(m.guards), "hosting": self.on_member(m.name)}
                        for m in sorted(self.members.values(), key=lambda m: m.name)],
            "placement": dict(sorted(self.nodes.items())),
        }


def node_capability_check(capabilities: Mapping[str, Any], requirements: Mapping[str, Any]) -> bool:
    """Thespian's ``actorSystemCapabilityCheck`` for actors that may be placed: an actor asked for on a node runs
    only on the actor system of that name; one asked for nowhere in particular runs where it is created."""
    wanted = requirements.get(NODE_CAPABILITY) if requirements else None
    return wanted is None or capabilities.get(NODE_CAPABILITY) == wanted
