"""Who the client is: the peer, or what trusted proxies say in X-Forwarded-For; and the SECURITY_ALLOWED_IPS check.

X-Forwarded-For is believed only as far as it was written by proxies we trust (AEYON_TRUSTED_PROXIES). Each proxy
appends the address it received the connection from, so the list is read from the right: entries that are trusted
proxies are hops inside our own edge, and the first one that is not is the client. Anything to its left was written
by the client itself and could say anything. An entry that does not parse stops the walk, and the client is then the
last trusted hop seen: the answer is always an address we parsed, never text a client chose.

Addresses are normalised so one host has one spelling (they also key the rate limiter): IPv4-mapped IPv6
(``::ffff:1.2.3.4``) becomes ``1.2.3.4``, IPv6 is compressed and lowercase, a zone (``%eth0``) is dropped, and an
entry's port and brackets (``1.2.3.4:5678``, ``[2001:db8::1]:443``) are stripped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv4-mapped IPv6 addresses: ::ffff:a.b.c.d.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_address(text: str) -> Address | None:
    """The address in ``text`` (an IP, optionally with brackets and a port), normalised; None if it is not one."""
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        # After the bracket only a port may follow.
        if close < 0 or not _is_port_suffix(text[close + 1:]):
            return None
        text = text[1:close]
    elif text.count(":") == 1:
        # One colon is IPv4 with a port; bare IPv6 has at least two.
        text, _, port = text.partition(":")
        if not _is_port_suffix(":" + port):
            return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(address.packed)
    return address


def _is_port_suffix(text: str) -> bool:
    if not text:
        return True
    port = text[1:]
    return text[0] == ":" and 1 <= len(port) <= 5 and port.isascii() and port.isdigit() and int(port) <= 65535


def client_address(
    peer_ip: str, forwarded_for: str | None, trusted_proxies: Sequence[Network] | Allowlist
) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy, in which case the rightmost untrusted
    address of X-Forwarded-For (several such headers joined with commas, in order).

    Empty list elements are skipped, as HTTP lists allow. A peer that does not parse is returned as given and
    trusted for nothing (the allowlist then refuses it). ``trusted_proxies`` may be an ``Allowlist`` built once.
    """
    peer = parse_address(peer_ip)
    if peer is None:
        return peer_ip
    if not len(trusted_proxies) or forwarded_for is None:
        return str(peer)
    trusted = trusted_proxies if isinstance(trusted_proxies, Allowlist) else Allowlist(trusted_proxies)
    if not trusted.contains_address(peer):
        return str(peer)
    hop = peer
    for entry in reversed(forwarded_for.split(",")):
        if not entry.strip():
            continue
        address = parse_address(entry)
        if address is None:
            break
        hop = address
        if not trusted.contains_address(address):
            break
    return str(hop)


def allowed(ip: str, networks: Sequence[Network]) -> bool:
    """True when ``networks`` is empty (no allowlist) or ``ip`` is in one of them; an unparseable ``ip`` is not."""
    return ip in Allowlist(networks)


class Allowlist:
    """A set of networks to test addresses against, split by family for speed; an empty one allows everything.

    IPv4-mapped IPv6 addresses and networks count as IPv4, so ``::ffff:10.0.0.1`` is in ``10.0.0.0/8`` and
    ``10.0.0.1`` is in ``::ffff:10.0.0.0/104``.
    """

    def __init__(self, networks: Iterable[Network]):
        self.networks: tuple[Network, ...] = tuple(networks)
        v4: set[tuple[int, int]] = set()
        v6: set[tuple[int, int]] = set()
        for network in self.networks:
            if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
                network = ipaddress.IPv4Network(
                    (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
            mask, base = int(network.netmask), int(network.network_address)
            (v4 if network.version == 4 else v6).add((mask, base))
        # (mask, network) pairs: membership is one AND and one compare per network.
        self._v4 = tuple(sorted(v4))
        self._v6 = tuple(sorted(v6))

    def __len__(self) -> int:
        """The number of networks given."""
        return len(self.networks)

    def __contains__(self, ip: object) -> bool:
        """True when the list is empty or ``ip`` (a string) parses and falls in one of the networks."""
        if not self.networks:
            return True
        if not isinstance(ip, str):
            return False
        address = parse_address(ip)
        return address is not None and self.contains_address(address)

    def contains_address(self, address: Address) -> bool:
        """True when the list is empty or ``address`` (already normalised by ``parse_address``) is in a network."""
        if not self.networks:
            return True
        value = int(address)
        pairs = self._v4 if address.version == 4 else self._v6
        return any(value & mask == base for mask, base in pairs)
