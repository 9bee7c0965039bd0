"""GuardSupervisor: one per registered guard; owns its health state and bulkhead, and supervises its workers.

Entries send it batches of calls. It answers at once the calls that must not go out (guard unhealthy, queue
full), queues the rest and hands them to idle workers. When a worker dies, the calls it held are answered
``upstream_error`` here, so no caller is left without an answer.
"""

from __future__ import annotations

from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited

from actors.base import AeyonActor
from actors.guard_worker import GuardWorker
from actors.messages import (
    CallAccepted,
    CallBatch,
    CallGuard,
    ConfigureGuard,
    DescribeService,
    Event,
    GuardReplied,
    HealthChecked,
    HealthReport,
    RepliesBatch,
    ServiceDescription,
    WorkBatch,
    WorkDone,
)
from actors.messages.events import SERVICE_HEALTH_CHANGED, Publish
from system.clock import wallclock
from system.guard_pool import GuardPool
from system.health import HealthState

RETRY_AFTER_UNAVAILABLE_S = 5


class _Worker:
    __slots__ = ("address", "batch_id", "slot")

    def __init__(self, slot: int, address: Any):
        self.slot = slot
        self.address = address
        self.batch_id = 0


class GuardSupervisor(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.spec: Any = None
        self.settings: Any = None
        self.peers: Any = None
        self.pool: GuardPool[CallGuard] | None = None
        self.health = HealthState()
        self.workers: list[_Worker] = []
        self.exiting = False
        self.counters = {"calls": 0, "refused": 0, "worker_deaths": 0}
        self._next_batch = 1

    # -- configuration -----------------------------------------------------------------------------------------

    def receiveMsg_ConfigureGuard(self, message: ConfigureGuard, sender: Any) -> None:
        first = self.spec is None
        self.spec = message.spec
        self.settings = message.settings
        self.peers = message.peers
        if first:
            self.pool = GuardPool(message.settings.workers_per_guard, message.settings.queue_per_guard)
            self.health = HealthState(checks_enabled=not message.settings.disable_health_checks)
            # One worker ahead of demand, so the first request does not wait for a process to start.
            self.pool.open_slot(0)
            self.workers.append(_Worker(0, self.createActor(GuardWorker)))

    # -- data plane --------------------------------------------------------------------------------------------

    def receiveMsg_CallBatch(self, batch: CallBatch, sender: Any) -> None:
        assert self.pool is not None
        refused = []
        refusal = self.health.refusal()
        for call in batch.calls:
            if refusal is not None:
                refused.append(GuardReplied(call.key, call.request_id, refusal[0], message=refusal[1],
                                            retry_after=RETRY_AFTER_UNAVAILABLE_S))
            elif not self.pool.admit(call):
                refused.append(GuardReplied(call.key, call.request_id, "overloaded",
                                            message=f"{self.spec.name}: {self.pool.queue_limit} calls already queued",
                                            retry_after=1))
        self.counters["calls"] += len(batch.calls)
        self.counters["refused"] += len(refused)
        self.send(sender, CallAccepted(batch.batch_id, batch.service, tuple(refused)))
        self._dispatch()

    def _dispatch(self) -> None:
        assert self.pool is not None
        for slot, calls, new in self.pool.assignments():
            if new:
                worker = _Worker(slot, self.createActor(GuardWorker))
                self.workers.append(worker)
            else:
                worker = next(w for w in self.workers if w.slot == slot)
            worker.batch_id = self._next_batch
            self._next_batch += 1
            self.send(worker.address, WorkBatch(worker.batch_id, tuple(calls)))

    def receiveMsg_WorkDone(self, message: WorkDone, sender: Any) -> None:
        assert self.pool is not None
        worker = self._worker(sender)
        if worker is None or worker.batch_id != message.batch_id:
            return
        self.pool.done(worker.slot)
        self._dispatch()

    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: Any) -> None:
        worker = self._worker(message.childAddress)
        if worker is None or self.pool is None:
            return
        self.workers.remove(worker)
        lost = self.pool.lost(worker.slot)
        if self.exiting:
            return
        self.counters["worker_deaths"] += 1
        self.log.warning("%s: a worker died holding %d calls", self.spec.name, len(lost))
        self._answer_failed(lost, "upstream_error", "the worker making the call died")
        self._dispatch()

    def _answer_failed(self, calls: list[CallGuard], code: str, text: str) -> None:
        by_entry: dict[str, tuple[Any, list[GuardReplied]]] = {}
        for call in calls:
            by_entry.setdefault(str(call.reply_to), (call.reply_to, []))[1].append(
                GuardReplied(call.key, call.request_id, code, message=text))
        for entry, replies in by_entry.values():
            self.send(entry, RepliesBatch(tuple(replies)))

    def _worker(self, address: Any) -> _Worker | None:
        for worker in self.workers:
            if worker.address == address:
                return worker
        return None

    # -- health ------------------------------------------------------------------------------------------------

    def receiveMsg_HealthChecked(self, message: HealthChecked, sender: Any) -> None:
        first = self.health.checks == 0
        previous = self.health.state
        if self.health.record(message.state) and self.peers is not None:
            self.send(self.peers.event_bus, Publish(Event(
                SERVICE_HEALTH_CHANGED, wallclock(),
                {"service_name": self.spec.name, "previous": previous, "state": message.state,
                 "message": message.message},
                source=self.spec.name)))
        if (first or previous != message.state) and self.peers is not None:
            self.send(self.peers.orchestrator, HealthReport(self.spec.name, message.state, first))

    # -- inspection --------------------------------------------------------------------------------------------

    def receiveMsg_DescribeService(self, message: DescribeService, sender: Any) -> None:
        self.send(sender, ServiceDescription(message.request_id, self.spec.name if self.spec else "", self.state()))

    def state(self) -> dict[str, Any]:
        """The live state shown by ``GET /v1/services`` and the actor tree."""
        pool = self.pool
        return {
            "health": self.health.state,
            "circuit": "closed",
            "in_flight": pool.in_flight if pool else 0,
            "queued": pool.queued if pool else 0,
            "workers": len(self.workers),
            "workers_busy": pool.busy if pool else 0,
            **self.counters,
        }

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: Any) -> None:
        # Children are being stopped with us: their exits must not be answered as failures or replaced.
        self.exiting = True
        if self.pool is not None:
            pending = self.pool.drain()
            for worker in self.workers:
                pending.extend(self.pool.lost(worker.slot))
            self._answer_failed(pending, "service_unavailable", "the guard is being removed")
