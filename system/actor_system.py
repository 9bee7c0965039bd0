"""Starting, joining and leaving the Thespian actor system (multiprocTCPBase) on the admin port.

Thespian's TCP transport listens on every interface, and its messages are pickles: whoever reaches an actor's
port can run code as the orchestrator's user. In the single-node default every actor-system socket is bound to
127.0.0.1 instead (``bind_to_loopback``), so nothing outside the host can reach them.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from thespian.actors import ActorSystem

from system.errors import GatewayError
from system.logs import log_defs

BASE = "multiprocTCPBase"
ROOT_NAME = "aeyon-orchestrator"
ROOT_CLASS = "actors.orchestrator.Orchestrator"


LOOPBACK = "127.0.0.1"


def bind_to_loopback() -> None:
    """Make every Thespian socket of this process, and of every process forked from it afterwards (the admin,
    the logger, each actor), listen on 127.0.0.1 only.

    ``THESPIAN_BASE_IPADDR`` alone only sets the address Thespian advertises: it still binds ``''`` (all
    interfaces). So the address class is patched to bind the advertised loopback address. Forked processes
    inherit the patched class (multiprocTCPBase forks, it does not spawn).
    """
    os.environ["THESPIAN_BASE_IPADDR"] = LOOPBACK
    from thespian.system.transport import IPBase

    address_class: Any = IPBase.IPActorAddress
    if getattr(address_class, "_aeyon_loopback", False):
        return
    original = address_class.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if self.bindname[0] in ("", "0.0.0.0"):
            self.bindname = (LOOPBACK, *self.bindname[1:])

    address_class.__init__ = __init__
    address_class._aeyon_loopback = True


def admin_listening(admin_port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True when something accepts TCP connections on the admin port."""
    with contextlib.suppress(OSError), socket.create_connection((host, admin_port), timeout=timeout):
        return True
    return False


def start_system(admin_port: int, level: str = "INFO", fmt: str = "text") -> ActorSystem:
    """Start a new admin on ``admin_port``; refuse when one already runs there (joining it would be a mistake)."""
    if admin_listening(admin_port):
        raise GatewayError(f"AEYON_ADMIN_PORT: port {admin_port} is in use (is an orchestrator already running? "
                           f"`aeyon stop` stops it)")
    bind_to_loopback()
    return ActorSystem(BASE, capabilities={"Admin Port": admin_port}, logDefs=log_defs(level, fmt))


def join_system(admin_port: int) -> ActorSystem:
    """Join the running admin on ``admin_port`` as an external client; never start one."""
    if not admin_listening(admin_port):
        raise GatewayError(f"no orchestrator answers on admin port {admin_port} (is `aeyon serve` running?)")
    # This process's endpoint (it receives the replies) must not listen on every interface either.
    bind_to_loopback()
    # transientUnique: a private handle, so joining does not replace a process-wide ActorSystem the caller has.
    return ActorSystem(BASE, capabilities={"Admin Port": admin_port}, logDefs=log_defs("WARNING"),
                       transientUnique=True)


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
