"""GuardSupervisor: one per registered guard. Owns the guard's circuit breaker, health state, bulkhead (bounded
queue and worker pool) and retry budget, and supervises its workers.

Entries send it batches of calls. It answers at once the calls that must not go out (guard unhealthy or never
healthy, breaker open, queue full), queues the rest and hands them to idle workers. A call still running past
the breaker's slow-call duration counts as slow at once (a hung guard trips the breaker in seconds, not at the
end of a 30 s timeout). When the breaker opens, queued calls are answered ``circuit_open`` at once. When a worker
dies, the calls it held are answered ``upstream_error`` here, so no caller is left without an answer, and it is
replaced at once within a restart intensity, past which the supervisor stops itself and lets the root restart it.
Breaker and health state are saved with the root at every change and given back on restart.
"""

from __future__ import annotations

import math
import time
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.base import AeyonActor
from actors.guard_worker import GuardWorker
from actors.messages import (
    CallAccepted,
    CallBatch,
    CallGuard,
    ConfigureGuard,
    DescribeService,
    Event,
    GuardGate,
    GuardReplied,
    HealthChecked,
    HealthReport,
    RepliesBatch,
    ServiceDescription,
    WorkBatch,
    WorkDone,
)
from actors.messages.control import ActorDescription, DescribeActor, EntrySwitched, GuardStateSaved, Retire
from actors.messages.events import (
    ACTOR_RESTARTED,
    CIRCUIT_BREAKER_CLOSED,
    CIRCUIT_BREAKER_OPENED,
    SERVICE_HEALTH_CHANGED,
    Publish,
)
from actors.messages.health import CheckNow
from system import metrics
from system.breaker import OPEN, CircuitBreaker, Transition
from system.clock import wallclock
from system.guard_client import DEGRADED, HEALTHY
from system.guard_pool import GuardPool
from system.health import STATUS_VALUE, HealthState
from system.placement import node_capability_check
from system.policy import GuardPolicy
from system.restart import RestartIntensity
from system.retry import RetryBudget

RETRY_AFTER_UNAVAILABLE_S = 5
# Work batches: a worker makes its calls one after another, so it gets as many as it finishes in this time
# (an estimate from the guard's recent call times). Few messages for a fast guard, spread work for a slow one.
BATCH_TARGET_S = 0.02
# How long calls short of a batch wait for a busy worker before another worker takes them.
HOLD_S = 0.005
MAX_WORK_BATCH = 32
EWMA = 0.2
TICK_S = 0.25
FAILED = frozenset({"upstream_error", "upstream_timeout"})


class _Worker:
    __slots__ = ("address", "batch_id", "calls", "flagged", "pid", "slot", "started", "tokens")

    def __init__(self, slot: int, address: Any):
        self.slot = slot
        self.address = address
        self.batch_id = 0
        self.started = 0.0
        self.tokens = 0
        self.flagged = 0
        self.pid = 0
        self.calls = 0


class GuardSupervisor(AeyonActor):
    """See the module docstring."""

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any], requirements: dict[str, Any]) -> bool:
        """Runs on the node the root asks for (multi-node placement, system/placement.py)."""
        return node_capability_check(capabilities, requirements)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.spec: Any = None
        self.settings: Any = None
        self.peers: Any = None
        self.policy = GuardPolicy()
        self.pool: GuardPool[CallGuard] | None = None
        self.health = HealthState()
        self.breaker = CircuitBreaker()
        self.budget = RetryBudget()
        self.intensity = RestartIntensity()
        self.workers: list[_Worker] = []
        self.retry_tokens_out = 0
        self.last_trip: dict[str, Any] | None = None
        self.entries: list[Any] = []  # entries that sent calls: they get the gate pushed
        self.call_time_s = 0.01
        self.exiting = False
        self.ticking = False
        self.holding = False  # a wakeup is due for calls held back for busy workers
        self.counters = {"calls": 0, "refused": 0, "retries": 0, "worker_restarts": 0, "trips": 0}
        self._next_batch = 1
        self._early: list[tuple[Any, Any]] = []
        self.retiring = False  # the guard moved to another node: answer what was taken, then stop
        self.awaiting: list[Any] = []  # entries that may still send calls while retiring
        self.switched: list[Any] = []  # entries that said they send no more

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        # Entries learn this supervisor's address from the Router, and may call it before the root's
        # ConfigureGuard arrives (Thespian orders messages per sender only): keep those until configured.
        if self.spec is None and not isinstance(message, ConfigureGuard | ActorExitRequest | ChildActorExited):
            self._early.append((message, sender))
            return None
        result = super().receiveMessage(message, sender)
        if self._early and self.spec is not None:
            early, self._early = self._early, []
            for queued, queued_sender in early:
                super().receiveMessage(queued, queued_sender)
        return result

    # -- configuration -----------------------------------------------------------------------------------------

    def receiveMsg_ConfigureGuard(self, message: ConfigureGuard, sender: Any) -> None:
        first = self.spec is None
        self.spec, self.settings, self.peers = message.spec, message.settings, message.peers
        self.policy = GuardPolicy.for_service(message.spec.name, message.spec.metadata, message.settings)
        if not first:
            self._apply(message.settings)
            return
        settings = message.settings
        # One call per worker batch until the guard's call times are known (a slow guard's calls must not queue
        # behind each other in one worker).
        self.pool = GuardPool(settings.workers_per_guard, settings.queue_per_guard, max_batch=1, hold_s=HOLD_S)
        self.budget = RetryBudget(settings.retry_budget_percent / 100.0, settings.retry_min_concurrency)
        self.intensity = RestartIntensity(settings.restart_max, settings.restart_period_s)
        self.health = HealthState(checks_enabled=not settings.disable_health_checks)
        saved = message.saved or {}
        self.breaker = (CircuitBreaker.restore(saved["breaker"], self.policy.breaker) if saved.get("breaker")
                        else CircuitBreaker(self.policy.breaker))
        if saved.get("health"):
            self.health.restore(saved["health"])
        metrics.BREAKER_STATE.labels(self.spec.name).set(metrics.BREAKER_VALUE[self.breaker.state])
        metrics.SERVICE_HEALTH.labels(self.spec.name).set(STATUS_VALUE[self.health.state])
        # One worker ahead of demand, so the first request does not wait for a process to start.
        self.pool.open_slot(0)
        self.workers.append(self._new_worker(0))
        self._tick_soon()

    def _apply(self, settings: Any) -> None:
        """New settings (a hot reload, or a new URL): limits and thresholds change; the breaker's state and window,
        the health state and the calls in progress stay."""
        assert self.pool is not None
        self.pool.max_workers = settings.workers_per_guard
        self.pool.queue_limit = settings.queue_per_guard
        self.budget = RetryBudget(settings.retry_budget_percent / 100.0, settings.retry_min_concurrency)
        self.intensity.max_restarts, self.intensity.period_s = settings.restart_max, settings.restart_period_s
        self.breaker.reconfigure(self.policy.breaker)
        self.health.checks_enabled = not settings.disable_health_checks
        self._push_gate()
        self._dispatch()

    # -- data plane --------------------------------------------------------------------------------------------

    def receiveMsg_CallBatch(self, batch: CallBatch, sender: Any) -> None:
        assert self.pool is not None
        if not any(entry == sender for entry in self.entries):
            self.entries.append(sender)
            self._push_gate([sender])
        self._transition(self.breaker.poll())
        refused = []
        unavailable = self.health.refusal(self.policy.allow_unchecked)
        for call in batch.calls:
            if unavailable is not None:
                refused.append(GuardReplied(call.key, call.request_id, unavailable[0], message=unavailable[1],
                                            retry_after=RETRY_AFTER_UNAVAILABLE_S))
            elif not self.breaker.try_acquire():
                refused.append(self._circuit_open(call))
            elif not self.pool.admit(call):
                self.breaker.release()
                refused.append(GuardReplied(call.key, call.request_id, "overloaded",
                                            message=f"{self.spec.name}: {self.pool.queue_limit} calls already queued",
                                            retry_after=1))
        self.counters["calls"] += len(batch.calls)
        self.counters["refused"] += len(refused)
        self.send(sender, CallAccepted(batch.batch_id, batch.service, tuple(refused)))
        self._dispatch()
        self._retire_when_idle()

    def _circuit_open(self, call: CallGuard) -> GuardReplied:
        return GuardReplied(call.key, call.request_id, "circuit_open",
                            message=f"{self.spec.name}: the circuit breaker is open",
                            retry_after=max(1, math.ceil(self.breaker.retry_after_s())))

    def _dispatch(self) -> None:
        assert self.pool is not None
        attempts = self.settings.retry_attempts
        for slot, calls, new in self.pool.assignments():
            if new:
                worker = self._new_worker(slot)
                self.workers.append(worker)
            else:
                worker = next(w for w in self.workers if w.slot == slot)
            in_flight = self.pool.in_flight + self.pool.queued
            worker.tokens = min(len(calls) * (attempts - 1), self.budget.allowance(in_flight, self.retry_tokens_out))
            self.retry_tokens_out += worker.tokens
            worker.batch_id = self._next_batch
            worker.started = time.monotonic()
            worker.flagged = 0
            self._next_batch += 1
            self.send(worker.address, WorkBatch(worker.batch_id, tuple(calls), worker.tokens, attempts))
        held = self.pool.held()
        if held is not None and not self.holding and not self.exiting:
            self.holding = True
            self.wakeupAfter(held + 0.0005, payload="hold")
        self._gauges()
        self._tick_soon()

    def receiveMsg_Retire(self, message: Retire, sender: Any) -> None:
        self.retiring = True
        self.awaiting = [e for e in message.entries if not any(e == s for s in self.switched)]
        self._retire_when_idle()

    def receiveMsg_EntrySwitched(self, message: EntrySwitched, sender: Any) -> None:
        self.switched.append(sender)
        self.awaiting = [e for e in self.awaiting if e != sender]
        self._retire_when_idle()

    def _retire_when_idle(self) -> None:
        # Calls may still be on their way from an entry until it says it switched (messages from one sender
        # arrive in order): stop only when every entry has, and nothing taken is left to answer.
        if (self.retiring and not self.exiting and not self.awaiting
                and (self.pool is None or self.pool.in_flight + self.pool.queued == 0)):
            self.send(self.myAddress, ActorExitRequest())

    def _gauges(self) -> None:
        if self.pool is not None and self.spec is not None:
            metrics.GUARD_IN_FLIGHT.labels(self.spec.name).set(self.pool.in_flight)
            metrics.GUARD_QUEUE.labels(self.spec.name).set(self.pool.queued)

    def receiveMsg_WorkDone(self, message: WorkDone, sender: Any) -> None:
        assert self.pool is not None
        worker = self._worker(sender)
        if worker is None or worker.batch_id != message.batch_id:
            return
        worker.pid = message.pid
        worker.calls += len(message.records)
        self.pool.done(worker.slot)
        self._return_tokens(worker)
        self.counters["retries"] += message.retries
        if message.retries:
            metrics.GUARD_RETRIES.labels(self.spec.name).inc(message.retries)
        slow_s = self.policy.breaker.slow_call_duration_s
        if message.busy_s and message.records:
            self.call_time_s += EWMA * (message.busy_s / len(message.records) - self.call_time_s)
        for record in message.records:
            if not message.busy_s:
                self.call_time_s += EWMA * (record.duration_s - self.call_time_s)
            if worker.flagged and record.duration_s >= slow_s:
                worker.flagged -= 1  # already counted as slow while it was running
                continue
            self._transition(self.breaker.record(record.outcome in FAILED, record.duration_s))
        worker.flagged = 0
        # As many calls per worker batch as it makes in BATCH_TARGET_S.
        self.pool.max_batch = max(1, min(MAX_WORK_BATCH, int(BATCH_TARGET_S / max(self.call_time_s, 1e-6))))
        self._dispatch()
        self._retire_when_idle()

    def _return_tokens(self, worker: _Worker) -> None:
        self.retry_tokens_out -= worker.tokens
        worker.tokens = 0

    # -- time: the breaker's open period, and calls that run too long -------------------------------------------

    def _tick_soon(self) -> None:
        if not self.ticking and not self.exiting:
            self.ticking = True
            self.wakeupAfter(TICK_S, payload="tick")

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload == "hold":
            self.holding = False
            if self.pool is not None:
                self._dispatch()
            return
        if message.payload != "tick":
            return
        self.ticking = False
        self._transition(self.breaker.poll())
        now = time.monotonic()
        slow_s = self.policy.breaker.slow_call_duration_s
        busy = [w for w in self.workers if self.pool is not None and w.slot in self._busy_slots()]
        for worker in busy:
            # One flag per full slow period a batch has been running: its current call is slow already.
            due = int((now - worker.started) // slow_s)
            while worker.flagged < min(due, 1):
                worker.flagged += 1
                self._transition(self.breaker.record_slow_in_progress())
        if busy or self.breaker.state != "closed":
            self._tick_soon()

    def _busy_slots(self) -> set[int]:
        assert self.pool is not None
        return self.pool.busy_slots()

    # -- breaker transitions -----------------------------------------------------------------------------------

    def _transition(self, transition: Transition | None) -> None:
        if transition is None or self.peers is None:
            return
        self.log.info("%s: circuit %s -> %s (%s)", self.spec.name, transition.previous, transition.state,
                      transition.cause)
        data = {"service_name": self.spec.name, "previous": transition.previous, "state": transition.state,
                "cause": transition.cause, "failure_rate": round(transition.failure_rate, 4),
                "slow_call_rate": round(transition.slow_call_rate, 4), "calls": transition.calls,
                "open_for_s": transition.open_for_s, "trips": transition.trips}
        metrics.BREAKER_STATE.labels(self.spec.name).set(metrics.BREAKER_VALUE[transition.state])
        if transition.state == OPEN:
            self.counters["trips"] += 1
            # The window is cleared on a trip: keep why it tripped, for the ops page and the tree.
            self.last_trip = {key: data[key] for key in ("cause", "failure_rate", "slow_call_rate", "calls",
                                                          "open_for_s")} | {"at": wallclock()}
            metrics.BREAKER_TRIPS.labels(self.spec.name).inc()
            self._publish(CIRCUIT_BREAKER_OPENED, data)
            assert self.pool is not None
            # Calls still queued would only wait to fail: answer them now.
            self._answer(self.pool.drain(), "circuit_open", f"{self.spec.name}: the circuit breaker is open",
                         retry_after=max(1, math.ceil(self.breaker.retry_after_s())))
            # Passive failures and active checks should agree: have the guard checked now.
            self.send(self.peers.health_monitor, CheckNow(self.spec.name))
        elif transition.state == "closed":
            self._publish(CIRCUIT_BREAKER_CLOSED, data)
        self._save()
        self._push_gate()
        self._tick_soon()

    def _push_gate(self, entries: list[Any] | None = None) -> None:
        """Tell the entries whether to refuse this guard's calls themselves (and until when)."""
        refusal = self.health.refusal(self.policy.allow_unchecked)
        if refusal is not None:
            gate = GuardGate(self.spec.name, refusal[0], refusal[1])
        elif self.breaker.state == OPEN:
            gate = GuardGate(self.spec.name, "circuit_open", f"{self.spec.name}: the circuit breaker is open",
                             wallclock() + self.breaker.retry_after_s())
        else:
            gate = GuardGate(self.spec.name)
        for entry in self.entries if entries is None else entries:
            self.send(entry, gate)

    def _save(self) -> None:
        if self.peers is not None and not self.retiring:
            self.send(self.peers.orchestrator, GuardStateSaved(
                self.spec.name, {"health": self.health.snapshot(), "breaker": self.breaker.snapshot()}))

    # -- workers -----------------------------------------------------------------------------------------------

    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: Any) -> None:
        worker = self._worker(message.childAddress)
        if worker is None or self.pool is None:
            return
        self.workers.remove(worker)
        lost = self.pool.lost(worker.slot)
        self._return_tokens(worker)
        if self.exiting:
            return
        self.log.warning("%s: a worker died holding %d calls", self.spec.name, len(lost))
        self._answer(lost, "upstream_error", "the worker making the call died")
        if lost:
            self._transition(self.breaker.record(True, time.monotonic() - worker.started))
        self.counters["worker_restarts"] += 1
        metrics.ACTOR_RESTARTS.labels("GuardWorker").inc()
        self._publish(ACTOR_RESTARTED, {"actor": f"{self.spec.name}/worker-{worker.slot}",
                                        "actor_class": "GuardWorker", "restarts": self.counters["worker_restarts"]})
        if not self.intensity.allow():
            # OTP: a supervisor whose children keep dying stops itself; its own supervisor (the root) decides.
            self.log.error("%s: workers died more than %d times in %g s; escalating", self.spec.name,
                           self.intensity.max_restarts, self.intensity.period_s)
            self.send(self.myAddress, ActorExitRequest())
            return
        # Replaced at once, under the same slot (and name), as an OTP supervisor restarts a permanent child.
        self.pool.open_slot(worker.slot)
        self.workers.append(self._new_worker(worker.slot))
        self._dispatch()

    def _answer(self, calls: list[CallGuard], code: str, text: str, retry_after: int | None = None) -> None:
        by_entry: dict[str, tuple[Any, list[GuardReplied]]] = {}
        for call in calls:
            by_entry.setdefault(str(call.reply_to), (call.reply_to, []))[1].append(
                GuardReplied(call.key, call.request_id, code, message=text, retry_after=retry_after))
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
        changed = self.health.record(message.state)
        metrics.SERVICE_HEALTH.labels(self.spec.name).set(STATUS_VALUE[message.state])
        if changed and self.peers is not None:
            self._publish(SERVICE_HEALTH_CHANGED, {"service_name": self.spec.name, "previous": previous,
                                                   "state": message.state, "message": message.message})
        if message.state in (HEALTHY, DEGRADED):
            self._transition(self.breaker.health_check_passed())
        if (first or changed) and self.peers is not None:
            self.send(self.peers.orchestrator, HealthReport(self.spec.name, message.state, first))
            self._save()
            self._push_gate()

    def _publish(self, event_type: str, data: dict[str, Any]) -> None:
        if self.peers is not None:
            self.send(self.peers.event_bus, Publish(Event(event_type, wallclock(), data, source=self.spec.name)))

    # -- inspection --------------------------------------------------------------------------------------------

    def receiveMsg_DescribeService(self, message: DescribeService, sender: Any) -> None:
        self.send(sender, ServiceDescription(message.request_id, self.spec.name if self.spec else "", self.state()))

    def state(self) -> dict[str, Any]:
        """The live state shown by ``GET /v1/services`` and the actor tree."""
        pool = self.pool
        return {
            "health": self.health.state,
            "circuit": self.breaker.state,
            "in_flight": pool.in_flight if pool else 0,
            "queued": pool.queued if pool else 0,
            "workers": len(self.workers),
            "workers_busy": pool.busy if pool else 0,
            "workers_max": pool.max_workers if pool else 0,
            "queue_max": pool.queue_limit if pool else 0,
            "last_trip": self.last_trip,
            "call_time_ms": round(self.call_time_s * 1000, 3),
            "work_batch": pool.max_batch if pool else 0,
            "failure_policy": self.policy.failure_policy,
            "breaker": self.breaker.snapshot(),
            **self.counters,
        }

    def children(self) -> list[tuple[Any, ...]]:
        """The workers, by slot, described here: a worker blocked in a call cannot answer for itself."""
        busy = self.pool.busy_slots() if self.pool is not None else set()
        now = time.monotonic()
        return [(f"worker-{w.slot}", w.address, {
            "actor_class": "GuardWorker", "pid": w.pid or None,
            "state": {"busy": w.slot in busy, "busy_for_s": round(now - w.started, 3) if w.slot in busy else 0.0,
                      "calls": w.calls}}) for w in self.workers]

    def _new_worker(self, slot: int) -> _Worker:
        worker = _Worker(slot, self.createActor(GuardWorker))
        # Idle now, so it answers at once: its pid, for the actor tree.
        self.send(worker.address, DescribeActor(f"pid/{slot}"))
        return worker

    def receiveMsg_ActorDescription(self, message: ActorDescription, sender: Any) -> None:
        worker = self._worker(sender)
        if worker is not None:
            worker.pid = message.pid

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: Any) -> None:
        # Children are being stopped with us: their exits must not be answered as failures or replaced.
        self.exiting = True
        if self.pool is not None:
            pending = self.pool.drain()
            for worker in self.workers:
                pending.extend(self.pool.lost(worker.slot))
            self._answer(pending, "service_unavailable", f"{self.spec.name if self.spec else 'the guard'} is "
                                                         "being removed or restarted", retry_after=1)
