"""Starting, joining and leaving the Thespian actor system (multiprocTCPBase) on the admin port; starting a member
that joins a leader's convention (multi-node).

Thespian's TCP transport listens on every interface, and its messages are pickles: whoever reaches an actor's
port can run code as the orchestrator's user. In the single-node default every actor-system socket is bound to
127.0.0.1 instead (``bind_to_loopback``), so nothing outside the host can reach them. Several nodes on several
hosts bind to the address of ``AEYON_NODE_ADDRESS`` instead (``bind_to``), which must then be firewalled to the
other nodes (README.rst, "Multi-node").
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import selectors
import socket
import types
from typing import Any

from thespian.actors import ActorSystem

from system.errors import GatewayError
from system.logs import log_defs
from system.placement import GUARDS_CAPABILITY, LEADER, NODE_CAPABILITY

BASE = "multiprocTCPBase"
ROOT_NAME = "aeyon-orchestrator"
ROOT_CLASS = "actors.orchestrator.Orchestrator"


LOOPBACK = "127.0.0.1"
# How often a member re-registers with the leader; the leader takes a member that missed 3 for lost. Thespian's
# default (7 min 22 s, so 22 minutes to notice a dead member) suits long-lived batch systems, not a request path.
HEARTBEAT_S = 1


def bind_to_loopback() -> None:
    """``bind_to(LOOPBACK)``."""
    bind_to(LOOPBACK)


def bind_to(address: str) -> None:
    """Make every Thespian socket of this process, and of every process forked from it afterwards (the admin,
    the logger, each actor), listen on ``address`` only, and advertise it.

    ``THESPIAN_BASE_IPADDR`` alone only sets the address Thespian advertises: it still binds ``''`` (all
    interfaces). So the address class is patched to bind the advertised loopback address. Forked processes
    inherit the patched class (multiprocTCPBase forks, it does not spawn).
    """
    os.environ["THESPIAN_BASE_IPADDR"] = address
    from thespian.system.transport import IPBase

    address_class: Any = IPBase.IPActorAddress
    address_class._aeyon_bind = address
    if getattr(address_class, "_aeyon_patched", False):
        return
    original = address_class.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.bindname[0] in ("", "0.0.0.0"):
            self.bindname = (address_class._aeyon_bind, *self.bindname[1:])

    address_class.__init__ = __init__
    address_class._aeyon_patched = True


class PollSelector:
    """What Thespian's TCP transport uses to wait for its sockets, built on one ``poll()`` call.

    The transport builds a new selector on every turn of its loop (its own comment says this could be optimized):
    with the default epoll selector that is an ``epoll_create``, one ``epoll_ctl`` per socket and a ``close``
    around each wait, about 28 us on this machine for six sockets, where ``poll`` needs one system call (about 4
    us). An actor turns its loop several times per message (the message, its acknowledgement, the sends), so at
    light load this is a good share of each message's cost. Same interface and event mapping as
    ``selectors.PollSelector``, less its bookkeeping; a descriptor that is not open makes ``select`` raise
    ``OSError(EBADF)``, as registering it with epoll would, which is how the transport finds a bad watched fd.
    """

    __slots__ = ("_masks", "_poll")

    def __init__(self) -> None:
        self._poll = select.poll()
        self._masks: dict[int, int] = {}

    def register(self, fd: int, events: int, data: Any = None) -> None:
        mask = self._masks.get(fd, 0)
        if events & selectors.EVENT_READ:
            mask |= select.POLLIN
        if events & selectors.EVENT_WRITE:
            mask |= select.POLLOUT
        if fd in self._masks:
            self._poll.modify(fd, mask)
        else:
            self._poll.register(fd, mask)
        self._masks[fd] = mask

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        wait = None if timeout is None else max(0, math.ceil(timeout * 1000))
        ready = []
        for fd, event in self._poll.poll(wait):
            if event & select.POLLNVAL:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            mask = self._masks[fd]
            events = 0
            if event & ~select.POLLOUT and mask & select.POLLIN:
                events |= selectors.EVENT_READ
            if event & ~select.POLLIN and mask & select.POLLOUT:
                events |= selectors.EVENT_WRITE
            if events:
                ready.append((types.SimpleNamespace(fd=fd), events))
        return ready

    def close(self) -> None:
        self._masks.clear()


def tune_transport() -> None:
    """Give Thespian's TCP transport the ``poll`` selector (``PollSelector``) in this process and every process
    forked from it afterwards."""
    from thespian.system.transport import TCPTransport

    TCPTransport.selectors = types.SimpleNamespace(
        DefaultSelector=PollSelector, EVENT_READ=selectors.EVENT_READ, EVENT_WRITE=selectors.EVENT_WRITE)


def set_heartbeat(seconds: int) -> None:
    """Members re-register every ``seconds``; a member silent for three is lost. Set in the process that starts
    the admin (it forks from here), on the leader and on every member alike."""
    from datetime import timedelta

    from thespian.system.admin import convention

    convention.CONVENTION_REREGISTRATION_PERIOD = timedelta(seconds=seconds)
    convention.CONVENTION_RESTART_PERIOD = timedelta(seconds=seconds)


def admin_listening(admin_port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on the admin port."""
    with contextlib.suppress(OSError), socket.create_connection((host, admin_port), timeout=timeout):
        return True
    return False


def start_system(admin_port: int, level: str = "INFO", fmt: str = "text", node_address: str = LOOPBACK,
                 heartbeat_s: int = HEARTBEAT_S) -> ActorSystem:
    """Start a new admin on ``admin_port`` (the leader of its convention, should members join); refuse when one
    already runs there (joining it would be a mistake)."""
    return _start_admin(admin_port, {NODE_CAPABILITY: LEADER}, level, fmt, node_address, heartbeat_s,
                        "is an orchestrator already running? `aeyon stop` stops it")


def start_member(admin_port: int, leader: tuple[str, int], name: str, guards: str, level: str = "INFO",
                 fmt: str = "text", node_address: str = LOOPBACK, heartbeat_s: int = HEARTBEAT_S) -> ActorSystem:
    """Start a member's admin on ``admin_port`` that joins the convention of the leader's admin at ``leader``,
    saying it is ``name`` and may host ``guards`` (``*``: any)."""
    capabilities = {"Convention Address.IPv4": leader, NODE_CAPABILITY: name, GUARDS_CAPABILITY: guards}
    return _start_admin(admin_port, capabilities, level, fmt, node_address, heartbeat_s,
                        "a member needs an admin port of its own, not the leader's")


def _start_admin(admin_port: int, capabilities: dict[str, Any], level: str, fmt: str, node_address: str,
                 heartbeat_s: int, hint: str) -> ActorSystem:
    if admin_listening(admin_port, node_address):
        raise GatewayError(f"AEYON_ADMIN_PORT: port {admin_port} is in use ({hint})")
    bind_to(node_address)
    set_heartbeat(heartbeat_s)
    tune_transport()
    return ActorSystem(BASE, capabilities={"Admin Port": admin_port, **capabilities}, logDefs=log_defs(level, fmt))


def join_system(admin_port: int) -> ActorSystem:
    """Join the running admin on ``admin_port`` as an external client; never start one."""
    if not admin_listening(admin_port):
        raise GatewayError(f"no orchestrator answers on admin port {admin_port} (is `aeyon serve` running?)")
    # This process's endpoint (it receives the replies) must not listen on every interface either.
    bind_to_loopback()
    tune_transport()
    # transientUnique: a private handle, so joining does not replace a process-wide ActorSystem the caller has.
    asys = ActorSystem(BASE, capabilities={"Admin Port": admin_port}, logDefs=log_defs("WARNING"),
                       transientUnique=True)
    node = _node_of(asys)
    if node not in (None, LEADER):
        leave_system(asys)
        raise GatewayError(f"admin port {admin_port} is member {node!r} of a multi-node orchestrator, not its "
                           f"leader: use the leader's admin port")
    return asys


def _node_of(asys: ActorSystem) -> str | None:
    """The node name the admin advertises (``aeyon.node``): ``leader``, a member's name, or None (unknown)."""
    from thespian.system.messages.status import Thespian_StatusReq

    with contextlib.suppress(Exception):
        status = asys.ask(asys._systemBase.adminAddr, Thespian_StatusReq(), 5.0)
        node = (getattr(status, "capabilities", None) or {}).get(NODE_CAPABILITY)
        return node if isinstance(node, str) else None
    return None


def root_address(asys: ActorSystem) -> Any:
    """The root actor's address (it has the globalName ``aeyon-orchestrator``)."""
    return asys.createActor(ROOT_CLASS, globalName=ROOT_NAME)


def leave_system(asys: ActorSystem) -> None:
    """Close this process's endpoint without stopping the actor system (``shutdown()`` would stop it all)."""
    base = getattr(asys, "_systemBase", None)
    transport = getattr(base, "transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()
