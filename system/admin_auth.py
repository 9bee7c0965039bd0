"""Who may call the mutating ops endpoints: the admin token when one is set, else loopback clients only."""

from __future__ import annotations

import hmac
import ipaddress


def admin_refusal(authorization: str | None, client_ip: str, admin_token: str | None) -> tuple[str, str] | None:
    """(code, message) when the caller may not change the orchestrator's state, None when it may."""
    if admin_token:
        expected = ("Bearer " + admin_token).encode()
        given = (authorization or "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            return "unauthorized", "this endpoint needs Authorization: Bearer <AEYON_ADMIN_TOKEN>"
        return None
    try:
        loopback = ipaddress.ip_address(client_ip).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return "forbidden", "with no AEYON_ADMIN_TOKEN set, only loopback clients may change services"
    return None
