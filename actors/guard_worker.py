"""GuardWorker: makes a supervisor's blocking guard calls, one at a time, each bounded by its deadline.

Workers are the only actors that block. Replies go straight to the entries that asked (one message per entry per
batch); the supervisor gets ``WorkDone`` with what its breaker needs.
"""

from __future__ import annotations

import time
from typing import Any

from actors.base import AeyonActor
from actors.messages import CallRecord, GuardReplied, RepliesBatch, WorkBatch, WorkDone
from system.guard_client import GuardClient


class GuardWorker(AeyonActor):
    """One blocking HTTP call at a time; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._client: GuardClient | None = None
        self.calls = 0

    def receiveMsg_WorkBatch(self, batch: WorkBatch, sender: Any) -> None:
        if self._client is None:
            self._client = GuardClient()
        # Keyed by the address's text: Thespian addresses are not hashable.
        replies: dict[str, tuple[Any, list[GuardReplied]]] = {}
        records = []
        for call in batch.calls:
            started = time.monotonic()
            outcome = self._client.call(call.endpoint, call.body, call.request_id, call.expires_at)
            records.append(CallRecord(outcome.outcome, time.monotonic() - started))
            replies.setdefault(str(call.reply_to), (call.reply_to, []))[1].append(
                GuardReplied(call.key, call.request_id, outcome.outcome, outcome.status, outcome.body, outcome.message)
            )
        self.calls += len(batch.calls)
        for entry, answered in replies.values():
            self.send(entry, RepliesBatch(tuple(answered)))
        self.send(sender, WorkDone(batch.batch_id, tuple(records)))
