"""RateLimiter: will own the per-identifier token buckets and lease budgets to the entries.

It sits in the tree where limiting belongs; the limiting itself (SECURITY_MAX_REQUESTS_PER_MINUTE, leases to
entries so it stays off the per-request path) is not built yet, so no request is limited today.
"""

from __future__ import annotations

from typing import Any

from actors.base import AeyonActor
from actors.messages.control import Configure


class RateLimiter(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.budget_per_minute = 0

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.budget_per_minute = message.settings.max_requests_per_minute

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"budget_per_minute": self.budget_per_minute, "limiting": False}
