"""The actor system's own ports (Thespian speaks pickle on them) must not be reachable from outside the host."""

from __future__ import annotations

import socket

import pytest

from tests.support.fake_guard import FakeGuard
from tests.support.orchestrator import Orchestrator, tagged_pids
from tests.support.sockets import listening_addresses, non_loopback_address

pytestmark = pytest.mark.integration


def test_every_socket_of_the_actor_system_listens_on_loopback_only(orchestrator: Orchestrator,
                                                                   fresh_guards: dict[str, FakeGuard]) -> None:
    listening = listening_addresses(tagged_pids(orchestrator.tag))
    ports = {port for _, port, _ in listening}
    # The admin, every actor, and the HTTP shim: plenty of sockets, and all of them on 127.0.0.1.
    assert orchestrator.admin_port in ports and orchestrator.http_port in ports
    assert len(listening) >= 15
    assert {ip for ip, _, _ in listening} == {"127.0.0.1"}, sorted(listening)


def test_the_actor_ports_refuse_connections_to_the_hosts_other_address(orchestrator: Orchestrator) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to try")
    listening = listening_addresses(tagged_pids(orchestrator.tag))
    assert listening
    for _, port, _ in listening:
        with pytest.raises(ConnectionRefusedError), socket.create_connection((address, port), timeout=2):
            pass
