"""What a set of processes listens on, read from /proc (Linux)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess


def _listeners() -> dict[int, tuple[str, int]]:
    """Every listening TCP socket on the host: inode -> (local ip, port)."""
    found = {}
    for table, family in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, inode = fields[1], fields[3], int(fields[9])
                if state != "0A":  # LISTEN
                    continue
                hex_ip, hex_port = local.split(":")
                raw = bytes.fromhex(hex_ip)
                if family == 4:
                    ip = str(ipaddress.IPv4Address(raw[::-1]))
                else:
                    # Four little-endian 32-bit words.
                    ip = str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
                found[inode] = (ip, int(hex_port, 16))
    return found


def listening_addresses(pids: list[int]) -> list[tuple[str, int, int]]:
    """(ip, port, pid) for every listening TCP socket the processes hold."""
    listeners = _listeners()
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inode = int(target[8:-1])
                        if inode in listeners:
                            out.append((*listeners[inode], pid))
    return out


def non_loopback_address() -> str | None:
    """An IPv4 address of this host that is not loopback, or None."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        output = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=5).stdout
        for line in output.splitlines():
            address = line.split()[3].split("/")[0]
            if not ipaddress.ip_address(address).is_loopback:
                return address
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = probe.getsockname()[0]
        if not ipaddress.ip_address(address).is_loopback:
            return address
    return None
