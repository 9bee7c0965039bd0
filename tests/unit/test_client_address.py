"""client_address (X-Forwarded-For believed only from trusted proxies) and the allowlist."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from system.client_address import Allowlist, allowed, client_address, parse_address


def nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


PROXIES = nets("10.0.0.0/8", "fd00::/8")


# -- client_address -----------------------------------------------------------------------------------------------


def test_no_trusted_proxies_means_the_peer():
    assert client_address("203.0.113.7", "198.51.100.1", []) == "203.0.113.7"


def test_untrusted_peer_is_the_client_even_with_forwarded_for():
    assert client_address("203.0.113.7", "198.51.100.1", PROXIES) == "203.0.113.7"


def test_trusted_peer_without_forwarded_for_is_the_client():
    assert client_address("10.0.0.1", None, PROXIES) == "10.0.0.1"
    assert client_address("10.0.0.1", "", PROXIES) == "10.0.0.1"


def test_trusted_peer_hands_over_to_the_rightmost_untrusted_entry():
    # The leftmost entries were written by the client and are ignored.
    assert client_address("10.0.0.1", "1.1.1.1, 198.51.100.1", PROXIES) == "198.51.100.1"


def test_chain_of_trusted_proxies_is_skipped():
    xff = "6.6.6.6, 198.51.100.1, 10.1.1.1, fd00::2, 10.2.2.2"
    assert client_address("10.0.0.1", xff, PROXIES) == "198.51.100.1"


def test_all_entries_trusted_gives_the_leftmost():
    assert client_address("10.0.0.1", "10.9.9.9, 10.8.8.8", PROXIES) == "10.9.9.9"


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("unknown", "10.0.0.1"),
        ("198.51.100.1, garbage", "10.0.0.1"),
        ("198.51.100.1, garbage, 10.2.2.2", "10.2.2.2"),  # stops at garbage: the last trusted hop
        ("198.51.100.1, 999.1.1.1", "10.0.0.1"),
        ("198.51.100.1, 1.2.3.4:99999", "10.0.0.1"),
        ("198.51.100.1, [::1", "10.0.0.1"),
        ("198.51.100.1, [::1]x", "10.0.0.1"),
        ("198.51.100.1, 1.2.3.4:", "10.0.0.1"),
        ("198.51.100.1, <script>", "10.0.0.1"),
    ],
)
def test_garbage_stops_the_walk_at_the_last_trusted_hop(xff, expected):
    assert client_address("10.0.0.1", xff, PROXIES) == expected


def test_empty_list_elements_are_skipped():
    assert client_address("10.0.0.1", "198.51.100.1, , 10.2.2.2,", PROXIES) == "198.51.100.1"


def test_ipv6_clients_and_proxies():
    assert client_address("fd00::1", "2001:DB8::1", PROXIES) == "2001:db8::1"
    assert client_address("2001:db8::5", "198.51.100.1", PROXIES) == "2001:db8::5"


def test_ipv4_mapped_addresses_become_ipv4():
    assert client_address("::ffff:10.0.0.1", "::ffff:198.51.100.1", PROXIES) == "198.51.100.1"
    assert client_address("::ffff:203.0.113.7", None, []) == "203.0.113.7"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("198.51.100.1:5678", "198.51.100.1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[::ffff:198.51.100.1]:80", "198.51.100.1"),
        ("  2001:0DB8:0000::0001  ", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_ports_brackets_case_and_zones_are_normalised(entry, expected):
    assert client_address("10.0.0.1", entry, PROXIES) == expected


def test_trusted_proxies_may_be_a_prebuilt_allowlist():
    assert client_address("10.0.0.1", "198.51.100.1", Allowlist(PROXIES)) == "198.51.100.1"
    assert client_address("10.0.0.1", "198.51.100.1", Allowlist([])) == "10.0.0.1"


def test_unparseable_peer_is_returned_as_given_and_trusted_for_nothing():
    assert client_address("not-an-ip", "198.51.100.1", nets("0.0.0.0/0")) == "not-an-ip"
    assert not allowed("not-an-ip", nets("0.0.0.0/0"))


def test_parse_address():
    assert parse_address("1.2.3.4") == ipaddress.ip_address("1.2.3.4")
    assert parse_address("1.2.3.4:65535") == ipaddress.ip_address("1.2.3.4")
    assert parse_address("1.2.3.4:65536") is None
    assert parse_address("") is None
    assert parse_address("1.2.3.4:+80") is None
    assert parse_address("1.2.3.4:\u0668\u0660") is None  # non-ASCII digits


# -- allowlist ----------------------------------------------------------------------------------------------------


def test_empty_allowlist_allows_everything():
    assert allowed("203.0.113.7", [])
    assert "anything" in Allowlist([])


def test_allowlist_ipv4():
    networks = nets("10.0.0.0/8", "192.168.1.5/32")
    assert allowed("10.200.3.4", networks)
    assert allowed("192.168.1.5", networks)
    assert not allowed("192.168.1.6", networks)
    assert not allowed("11.0.0.1", networks)


def test_allowlist_ipv6():
    networks = nets("2001:db8::/32", "::1/128")
    assert allowed("2001:db8:ffff::1", networks)
    assert allowed("::1", networks)
    assert not allowed("2001:db9::1", networks)
    assert not allowed("127.0.0.1", networks)


def test_allowlist_families_do_not_mix():
    assert not allowed("10.0.0.1", nets("::/0"))
    assert not allowed("2001:db8::1", nets("0.0.0.0/0"))


def test_mapped_addresses_match_ipv4_networks_and_mapped_networks_match_ipv4():
    assert allowed("::ffff:10.1.2.3", nets("10.0.0.0/8"))
    assert allowed("10.1.2.3", nets("::ffff:10.0.0.0/104"))
    assert not allowed("11.1.2.3", nets("::ffff:10.0.0.0/104"))


@pytest.mark.parametrize("ip", ["", "garbage", "10.0.0", "10.0.0.256", "::g", None, 167772161])
def test_allowlist_refuses_what_does_not_parse(ip):
    assert ip not in Allowlist(nets("0.0.0.0/0", "::/0"))


def test_allowlist_length_and_networks():
    allowlist = Allowlist(nets("10.0.0.0/8", "::1/128"))
    assert len(allowlist) == 2
    assert allowlist.networks == tuple(nets("10.0.0.0/8", "::1/128"))


# -- properties ---------------------------------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
addresses = st.one_of(ipv4, ipv6)
entries = st.one_of(
    addresses,
    ipv4.map(lambda a: f"{a}:8080"),
    ipv6.map(lambda a: f"[{a}]:443"),
    st.sampled_from(["10.1.2.3", "fd00::9", "unknown", "", " ", "[", "]", ":", "1.2.3.4:", "::ffff:10.0.0.1"]),
    st.text(max_size=20),
)
network_lists = st.lists(
    st.sampled_from(["10.0.0.0/8", "fd00::/8", "0.0.0.0/0", "::/0", "192.0.2.0/24", "::ffff:0:0/96"]),
    max_size=3,
).map(lambda cidrs: nets(*cidrs))


@settings(max_examples=300, deadline=None)
@given(peer=addresses, xff=st.one_of(st.none(), st.lists(entries, max_size=6).map(", ".join)),
       trusted=network_lists)
def test_result_is_always_a_valid_normalised_address(peer, xff, trusted):
    result = client_address(peer, xff, trusted)
    address = ipaddress.ip_address(result)
    assert str(address) == result
    assert not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None)


@settings(max_examples=300, deadline=None)
@given(peer=addresses, xff=st.lists(entries, max_size=6).map(", ".join), trusted=network_lists)
def test_result_is_the_peer_or_an_entry(peer, xff, trusted):
    result = client_address(peer, xff, trusted)
    candidates = {str(parse_address(peer))} | {str(parse_address(e)) for e in xff.split(",")}
    assert result in candidates


@settings(max_examples=300, deadline=None)
@given(ip=addresses, cidrs=network_lists)
def test_allowlist_agrees_with_ipaddress(ip, cidrs):
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    mapped_as_v4 = [
        ipaddress.ip_network((int(n.network_address) & 0xFFFFFFFF, n.prefixlen - 96))
        if n.version == 6 and n.subnet_of(ipaddress.ip_network("::ffff:0:0/96")) else n
        for n in cidrs
    ]
    expected = not cidrs or any(address.version == n.version and address in n for n in mapped_as_v4)
    assert allowed(ip, cidrs) == expected
