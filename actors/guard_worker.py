"""GuardWorker: makes a supervisor's blocking guard calls, one at a time, each bounded by its deadline.

Workers are the only actors that block. A call that fails in a retryable way (refused or reset connection, 502,
503, 504) is tried again after a fully jittered backoff, never past its deadline and only while the batch's retry
tokens last (the supervisor hands them out under its retry budget). Replies go straight to the entries that
asked (one message per entry per batch); the supervisor gets ``WorkDone`` with every attempt, for its breaker.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from actors.base import AeyonActor
from actors.messages import CallGuard, CallRecord, GuardReplied, RepliesBatch, WorkBatch, WorkDone
from system.guard_client import CallOutcome, GuardClient
from system.retry import RetryPolicy


def runqueue_wait_s() -> float | None:
    """Seconds this process has spent runnable but waiting for a CPU (Linux schedstat), or None."""
    try:
        with open("/proc/self/schedstat", "rb") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class GuardWorker(AeyonActor):
    """One blocking HTTP call at a time; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._client: GuardClient | None = None
        self._rng = random.Random()
        self.calls = 0
        self.retries = 0

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"calls": self.calls, "retries": self.retries}

    def receiveMsg_WorkBatch(self, batch: WorkBatch, sender: Any) -> None:
        if self._client is None:
            self._client = GuardClient()
        policy = RetryPolicy(max_attempts=batch.max_attempts)
        started, waited = time.monotonic(), runqueue_wait_s()
        tokens = batch.retry_tokens
        # Keyed by the address's text: Thespian addresses are not hashable.
        replies: dict[str, tuple[Any, list[GuardReplied]]] = {}
        records: list[CallRecord] = []
        for call in batch.calls:
            outcome, tokens = self._call(call, policy, tokens, records)
            replies.setdefault(str(call.reply_to), (call.reply_to, []))[1].append(
                GuardReplied(call.key, call.request_id, outcome.outcome, outcome.status, outcome.body, outcome.message)
            )
        used = batch.retry_tokens - tokens
        self.calls += len(batch.calls)
        self.retries += used
        for entry, answered in replies.values():
            self.send(entry, RepliesBatch(tuple(answered)))
        waited_now = runqueue_wait_s()
        busy_s = 0.0
        if waited is not None and waited_now is not None:
            busy_s = max(0.0, time.monotonic() - started - (waited_now - waited))
        self.send(sender, WorkDone(batch.batch_id, tuple(records), used, os.getpid(), busy_s))

    def _call(self, call: CallGuard, policy: RetryPolicy, tokens: int,
              records: list[CallRecord]) -> tuple[CallOutcome, int]:
        assert self._client is not None
        attempt = 0
        while True:
            started = time.monotonic()
            outcome = self._client.call(call.endpoint, call.body, call.request_id, call.expires_at)
            records.append(CallRecord(outcome.outcome, time.monotonic() - started))
            attempt += 1
            retryable = outcome.connection_failed or (
                outcome.outcome == "upstream_error" and outcome.status in policy.retry_statuses)
            if not retryable or tokens <= 0:
                return outcome, tokens
            backoff = policy.backoff_s(attempt - 1, self._rng)
            if not policy.should_retry(attempt, retryable, call.expires_at - time.time(), backoff):
                return outcome, tokens
            tokens -= 1
            time.sleep(backoff)
