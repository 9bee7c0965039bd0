"""Closed-loop load through the Python gateway, for ``bin/bench``: one ``Gateway`` joined to a running
orchestrator, ``--threads`` threads each calling ``gateway.orchestrate(service, payload)`` one call after the other
for ``--duration`` seconds. It writes its figures as a JSON object to ``--out``.

Each thread makes one unreported call first (its private actor-system endpoint is created then), and the
measured time starts when every thread has made it. Latencies are in milliseconds; ``statuses`` counts the results
as ``"success"`` or ``"error CODE"``; ``cpu_s`` is this process's CPU time over the measured run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from system.gateway import Gateway

CALL_TIMEOUT_S = 10.0  # each call's "timeout"
START_TIMEOUT_S = 30.0  # for every thread's first call


class _Worker:
    """One thread's calls and what they got."""

    def __init__(self, gateway: Gateway, service: str, payload: dict[str, Any]):
        self.gateway = gateway
        self.service = service
        self.payload = payload
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.last = 0.0  # when its last call returned (time.monotonic())

    def call(self) -> str:
        """One call: "success", "error CODE", or "exception NAME" when the gateway raised."""
        try:
            result = self.gateway.orchestrate(self.service, self.payload, timeout=CALL_TIMEOUT_S)
        except Exception as exc:  # counted like an error answer, and the load goes on
            return f"exception {type(exc).__name__}"
        return "success" if result.ok else f"error {result.error_code}"

    def run(self, ready: threading.Barrier, start: list[float], duration_s: float) -> None:
        """The thread: one unreported call, wait for the others (``start[0]`` is then set), then calls until
        ``duration_s`` seconds after it."""
        self.call()
        ready.wait()
        deadline = start[0] + duration_s
        while True:
            began = time.monotonic()
            if began >= deadline:
                return
            status = self.call()
            self.last = time.monotonic()
            self.latencies.append(self.last - began)
            self.statuses[status] += 1


def load(admin_port: int, service: str, payload: dict[str, Any], threads: int, duration_s: float) -> dict[str, Any]:
    """Run the load and return its figures."""
    start: list[float] = []
    ready = threading.Barrier(threads + 1, action=lambda: start.append(time.monotonic()), timeout=START_TIMEOUT_S)
    with Gateway.connect(admin_port=admin_port) as gateway:
        workers = [_Worker(gateway, service, payload) for _ in range(threads)]
        running = [threading.Thread(target=worker.run, args=(ready, start, duration_s), name=f"gateway-load-{n}")
                   for n, worker in enumerate(workers)]
        for thread in running:
            thread.start()
        ready.wait()
        cpu = time.process_time()
        for thread in running:
            thread.join()
        cpu_s = time.process_time() - cpu
    latencies = sorted(latency for worker in workers for latency in worker.latencies)
    statuses = sum((worker.statuses for worker in workers), Counter[str]())
    elapsed = max((worker.last for worker in workers), default=start[0]) - start[0]
    return {
        "service": service, "threads": threads, "duration_s": duration_s, "requests": len(latencies),
        "ok": statuses["success"], "statuses": dict(statuses), "elapsed_s": round(elapsed, 4),
        "requests_per_s": round(len(latencies) / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": _percentile_ms(latencies, 50), "p99_ms": _percentile_ms(latencies, 99),
        "max_ms": _percentile_ms(latencies, 100), "cpu_s": round(cpu_s, 4),
    }


def _percentile_ms(ordered: list[float], percent: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[max(math.ceil(percent / 100 * len(ordered)), 1) - 1] * 1000.0, 4)


def main() -> int:
    """Entry point: ``gateway_load.py --admin-port P --out PATH [--threads N] [--duration S] [--service NAME]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--service", default="tokenguard")
    parser.add_argument("--payload", default='{"text": "hello world"}')
    args = parser.parse_args()
    figures = load(args.admin_port, args.service, json.loads(args.payload), args.threads, args.duration)
    args.out.write_text(json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
