"""The edge's checks, in order, on every request that reaches the HTTP shim: who the client is (believing
X-Forwarded-For only from AEYON_TRUSTED_PROXIES), the IP allowlist, the request signature, and the rate limit.

A plain class: the shim asks ``screen()`` and gets either nothing to object to (and the identifier to count the
request against) or a ``Refusal`` with the contract's code and the violation type it is counted under.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from system.client_address import Allowlist, client_address
from system.ratelimit import RateLimitPolicy, TokenBuckets
from system.signing import SignatureChecker

# orchestrator_security_violations_total{violation_type}: the fixed set of values.
VIOLATION_TYPES = (
    "ip_not_allowed",
    "missing_signature",
    "bad_signature",
    "stale_timestamp",
    "replayed_signature",
    "rate_limited",
    "invalid_payload",
    "payload_too_large",
    "malformed_http",
    "admin_unauthorized",
)

# Probes must reach these whatever the allowlist says (a load balancer's or a kubelet's address is rarely in it).
OPEN_PATHS = frozenset({"/health", "/ready"})

MAX_CLIENT_ID = 128


@attrs.frozen
class Refusal:
    """A request refused at the edge: the contract's code, a message, and how it is counted."""

    code: str
    message: str
    violation: str
    retry_after: int | None = None


@attrs.frozen
class Screened:
    """What the edge found: the client's address, the identifier it is rate-limited by, and any refusal."""

    client_ip: str
    identifier: str
    refusal: Refusal | None = None


class Edge:
    """The checks of one entry; see the module docstring. ``share`` is this entry's part of the rate limit when
    several entries split it."""

    def __init__(self, settings: Any, share: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time):
        self._trusted = tuple(settings.trusted_proxies)
        self._allowlist = Allowlist(settings.allowed_ips)
        self._signatures = SignatureChecker(settings.secret_key, clock=wallclock) if settings.secret_key else None
        self._key = settings.secret_key
        self._buckets = TokenBuckets(RateLimitPolicy(settings.max_requests_per_minute, share=share), clock=clock)

    def reconfigure(self, settings: Any, wallclock: Callable[[], float] = time.time) -> None:
        """New settings (hot reload): the buckets and the replay cache are kept."""
        self._trusted = tuple(settings.trusted_proxies)
        self._allowlist = Allowlist(settings.allowed_ips)
        if not settings.secret_key:
            self._signatures = None
        elif self._signatures is None or self._key != settings.secret_key:
            replay = self._signatures.replay if self._signatures is not None else None
            self._signatures = SignatureChecker(settings.secret_key, clock=wallclock, replay=replay)
        self._key = settings.secret_key

    def set_share(self, per_minute: int, share: float) -> None:
        """The RateLimiter's policy for this entry."""
        self._buckets.set_policy(RateLimitPolicy(per_minute, share=share))

    def screen(self, path: str, headers: Mapping[str, str], peer_ip: str, body: bytes, *,
               orchestrate: bool) -> Screened:
        """Check one HTTP request; ``orchestrate`` for ``POST /v1/orchestrate`` (signed and rate-limited)."""
        client = client_address(peer_ip, headers.get("x-forwarded-for"), self._trusted) if self._trusted else peer_ip
        identifier = _identifier(headers.get("x-client-id"), client)
        if path not in OPEN_PATHS and client not in self._allowlist:
            return Screened(client, identifier, Refusal("forbidden", f"client address {client} is not allowed",
                                                        "ip_not_allowed"))
        if orchestrate and self._signatures is not None:
            problem = self._signatures.check(headers.get("x-aeyon-timestamp"), headers.get("x-aeyon-signature"),
                                             body)
            if problem is not None:
                return Screened(client, identifier, Refusal("unauthorized", problem, _signature_violation(problem)))
        if orchestrate:
            refusal = self.rate_limit(identifier)
            if refusal is not None:
                return Screened(client, identifier, refusal)
        return Screened(client, identifier)

    def rate_limit(self, identifier: str) -> Refusal | None:
        """Take one token from the identifier's bucket; a refusal with an honest Retry-After when it is empty."""
        decision = self._buckets.take(identifier)
        if decision.allowed:
            return None
        return Refusal("rate_limited", "too many requests for this client; retry later", "rate_limited",
                       max(1, math.ceil(decision.retry_after_s)))

    @property
    def buckets(self) -> int:
        """Identifiers with a bucket now (memory in use)."""
        return len(self._buckets)


def _identifier(client_id: str | None, client_ip: str) -> str:
    # X-Client-ID names the budget when given; kept short and printable so it is safe in logs and labels.
    if client_id and len(client_id) <= MAX_CLIENT_ID and client_id.isprintable():
        return "id:" + client_id
    return "ip:" + client_ip


def _signature_violation(problem: str) -> str:
    if problem.startswith("missing"):
        return "missing_signature"
    if "window" in problem:
        return "stale_timestamp"
    if "replay" in problem:
        return "replayed_signature"
    return "bad_signature"
