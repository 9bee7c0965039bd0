"""HealthMonitor: schedules every guard's health checks and runs them on its own workers.

At most ``MAX_CHECKS_IN_FLIGHT`` checks run at once across the system: that is the number of workers it keeps,
and a check waits until a worker is free (a mailbox and a queue, not a lock). A failed check is tried again
(``CHECK_ATTEMPTS`` in all, fully jittered exponential backoff) before the guard is reported unhealthy, so one
lost packet does not take a guard out of service. Results go to the guard's supervisor, which owns the health
state. An unhealthy guard is checked every ``UNHEALTHY_INTERVAL_S``; a supervisor whose breaker opened asks for
a check at once (``CheckNow``), and a replaced supervisor gets one at once too.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from actors.base import AeyonActor
from actors.health_worker import HealthWorker
from actors.messages import CheckHealth, CheckNow, HealthChecked
from actors.messages.control import ActorDescription, Configure, DescribeActor, Topology
from system import metrics
from system.guard_client import UNHEALTHY
from system.retry import RetryPolicy
from system.routing import health_url

MAX_CHECKS_IN_FLIGHT = 10
# A guard that failed is checked more often, so it gets traffic back soon after it recovers.
UNHEALTHY_INTERVAL_S = 5.0
CHECK_ATTEMPTS = 3
CHECK_RETRY = RetryPolicy(max_attempts=CHECK_ATTEMPTS, base_s=0.2, cap_s=2.0)


class _Target:
    __slots__ = ("attempt", "due", "name", "running", "supervisor", "url")

    def __init__(self, name: str, url: str, supervisor: Any, due: float):
        self.name = name
        self.url = url
        self.supervisor = supervisor
        self.due = due
        self.running = False
        self.attempt = 0


class HealthMonitor(AeyonActor):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings: Any = None
        self.targets: dict[str, _Target] = {}
        self.idle: list[Any] = []
        self.busy: list[tuple[Any, str]] = []
        self.waiting: deque[str] = deque()
        self.timer_at: float | None = None
        self.exiting = False
        self.checks = 0
        self._next_id = 1
        self._rng = random.Random()
        self.pids: dict[str, int] = {}

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings = message.settings

    def receiveMsg_Topology(self, message: Topology, sender: Any) -> None:
        if self.settings is None or self.settings.disable_health_checks:
            return
        now = time.monotonic()
        current = {}
        for service in message.services:
            name = service.spec.name
            url = health_url(service.spec.url)
            old = self.targets.get(name)
            if old is not None and old.url == url:
                if old.supervisor != service.supervisor:
                    old.supervisor = service.supervisor
                    old.due = now  # a replacement supervisor: check at once
                current[name] = old
            else:
                current[name] = _Target(name, url, service.supervisor, now)
        self.targets = current
        self._run_due()

    def _run_due(self) -> None:
        now = time.monotonic()
        for target in self.targets.values():
            if not target.running and target.due <= now and target.name not in self.waiting:
                self.waiting.append(target.name)
        while self.waiting:
            worker = self._idle_worker()
            if worker is None:
                break
            name = self.waiting.popleft()
            due = self.targets.get(name)
            if due is None:
                self.idle.append(worker)
                continue
            due.running = True
            request_id = f"health-{self._next_id}"
            self._next_id += 1
            self.busy.append((worker, name))
            self.send(worker, CheckHealth(request_id, name, due.url, self.settings.health_timeout_s))
        self._arm_timer()

    def _idle_worker(self) -> Any:
        if self.idle:
            return self.idle.pop()
        if len(self.busy) < MAX_CHECKS_IN_FLIGHT:
            worker = self.createActor(HealthWorker)
            # Idle now, so it answers at once: its pid, for the actor tree (it is never asked while checking).
            self.send(worker, DescribeActor("pid"))
            return worker
        return None

    def receiveMsg_ActorDescription(self, message: ActorDescription, sender: Any) -> None:
        self.pids[str(sender)] = message.pid

    def _arm_timer(self) -> None:
        # Checks already queued for a worker start when one is free (HealthChecked), not on a timer: arming one
        # for them while every worker is busy would spin.
        waiting = [t.due for t in self.targets.values() if not t.running and t.name not in self.waiting]
        if not waiting:
            return
        due = min(waiting)
        # Timers cannot be cancelled: arm one only when it is earlier than the one pending; stale ones are harmless.
        if self.timer_at is None or due < self.timer_at - 0.001 or self.timer_at < time.monotonic():
            self.timer_at = due
            self.wakeupAfter(max(0.0, due - time.monotonic()))

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if self.timer_at is not None and self.timer_at <= time.monotonic() + 0.001:
            self.timer_at = None
        self._run_due()

    def receiveMsg_HealthChecked(self, message: HealthChecked, sender: Any) -> None:
        self._release(sender)
        self.checks += 1
        metrics.HEALTH_CHECKS.labels(message.service, message.state.lower()).inc()
        metrics.HEALTH_CHECK_DURATION.labels(message.service).observe(message.duration_s)
        target = self.targets.get(message.service)
        if target is not None:
            target.running = False
            now = time.monotonic()
            target.attempt += 1
            if message.state == UNHEALTHY and target.attempt < CHECK_ATTEMPTS:
                target.due = now + CHECK_RETRY.backoff_s(target.attempt - 1, self._rng)
            else:
                interval = self.settings.health_interval_s
                if message.state == UNHEALTHY:
                    interval = min(interval, UNHEALTHY_INTERVAL_S)
                target.due = now + interval
                target.attempt = 0
                self.send(target.supervisor, message)
        self._run_due()

    def receiveMsg_CheckNow(self, message: CheckNow, sender: Any) -> None:
        target = self.targets.get(message.service)
        if target is not None and not target.running:
            target.due = time.monotonic()
            self._run_due()

    def _release(self, worker: Any) -> str | None:
        for i, (address, name) in enumerate(self.busy):
            if address == worker:
                del self.busy[i]
                self.idle.append(address)
                return name
        return None

    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: Any) -> None:
        self.pids.pop(str(message.childAddress), None)
        self.idle = [w for w in self.idle if w != message.childAddress]
        for i, (address, name) in enumerate(self.busy):
            if address == message.childAddress:
                del self.busy[i]
                target = self.targets.get(name)
                if target is not None:
                    target.running = False
                break
        if not self.exiting:
            self._run_due()

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: Any) -> None:
        self.exiting = True

    def children(self) -> list[tuple[Any, ...]]:
        """The health workers, described here: a worker in the middle of a check cannot answer for itself."""
        workers = [(a, None) for a in self.idle] + list(self.busy)
        return [(f"health-worker-{i}", address, {"actor_class": "HealthWorker", "pid": self.pids.get(str(address)),
                                                  "state": {"checking": name}})
                for i, (address, name) in enumerate(workers)]

    def state(self) -> dict[str, Any]:
        """For inspection."""
        return {"targets": len(self.targets), "checks_in_flight": len(self.busy), "checks": self.checks}
