"""Per-guard policy: what happens when the guard fails, whether it may serve before its first passing health
check, and its breaker's settings. Defaults come from the settings; a registration's metadata overrides them.

Metadata keys (``POST /v1/services``)::

    {"failure_policy": "fail_open" | "fail_closed",
     "allow_unchecked": true | false,
     "breaker": {"window_size": 20, "minimum_calls": 10, "failure_rate_threshold": 0.5, ...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from system.breaker import BreakerConfig

FAIL_CLOSED = "fail_closed"
FAIL_OPEN = "fail_open"
FAILURE_POLICIES = (FAIL_CLOSED, FAIL_OPEN)

# Failures of the guard path that a fail-open guard turns into a degraded success. Refusals about the request
# itself (invalid_request, ...), the guard's verdict (guard_rejected) and back-pressure (overloaded) stay errors.
DEGRADABLE_CODES = frozenset({"upstream_error", "upstream_timeout", "circuit_open", "service_unavailable"})

BREAKER_KEYS = tuple(f.name for f in attrs.fields(BreakerConfig))


@attrs.frozen
class GuardPolicy:
    """The effective policy of one guard."""

    failure_policy: str = FAIL_CLOSED
    allow_unchecked: bool = False
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)

    @classmethod
    def for_service(cls, name: str, metadata: Mapping[str, Any], settings: Any) -> GuardPolicy:
        """The policy of service ``name``: its metadata, else the settings' defaults."""
        failure_policy = metadata.get("failure_policy") or (FAIL_OPEN if name in settings.fail_open else FAIL_CLOSED)
        allow_unchecked = metadata.get("allow_unchecked")
        if allow_unchecked is None:
            allow_unchecked = name in settings.allow_unchecked
        overrides = metadata.get("breaker") or {}
        return cls(failure_policy, bool(allow_unchecked),
                   attrs.evolve(settings.breaker, **{k: v for k, v in overrides.items() if k in BREAKER_KEYS}))


def policy_problem(metadata: Mapping[str, Any]) -> str | None:
    """Why the policy keys of a registration's metadata are wrong, or None."""
    policy = metadata.get("failure_policy")
    if policy is not None and policy not in FAILURE_POLICIES:
        return "metadata.failure_policy must be fail_open or fail_closed"
    if "allow_unchecked" in metadata and not isinstance(metadata["allow_unchecked"], bool):
        return "metadata.allow_unchecked must be true or false"
    breaker = metadata.get("breaker")
    if breaker is None:
        return None
    if not isinstance(breaker, Mapping):
        return "metadata.breaker must be an object"
    unknown = sorted(set(breaker) - set(BREAKER_KEYS))
    if unknown:
        return "metadata.breaker has unknown keys: " + ", ".join(unknown)
    for key, value in breaker.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"metadata.breaker.{key} must be a number"
    try:
        BreakerConfig(**breaker)
    except (TypeError, ValueError) as exc:
        return f"metadata.breaker: {exc}"
    return None
