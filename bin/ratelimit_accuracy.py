"""Measure how exactly the HTTP shim's rate limit admits what it promises: a client driven far over its budget must
get the bucket's refill rate and no more, and a client under its budget must get everything.

Run it as ``bin/ratelimit-accuracy`` (which prepares the project's virtual environment first). It

1. starts a fast local guard (a threaded standard-library JSON echo server, as ``bin/fuzz`` uses) and ``aeyon
   serve`` routing ``tokenguard`` to it with ``SECURITY_MAX_REQUESTS_PER_MINUTE`` set to ``--per-minute``
   (default 600), on free ports, and waits for ``GET /ready``;
2. drains client A's bucket (``X-Client-ID: ratelimit-a``): sends as fast as ``--connections`` keep-alive
   connections allow until an answer is 429 ``rate_limited`` (a fresh identifier's bucket holds the whole minute's
   budget);
3. then, for ``--duration`` seconds (default 60), drives client A at ``--over`` times the refill rate (default 4),
   paced on a fixed schedule spread over the connections, and client B (``X-Client-ID: ratelimit-b``) at ``--under``
   times it (default 0.5) on a connection of its own;
4. prints what A sent and what was admitted (200), refused (429) or answered otherwise, the number expected (the
   refill rate times the time from A's first to its last request of the run), the error in percent, and B's
   admitted share;
5. always stops the orchestrator (``aeyon stop``, then kills whatever still carries this run's tag) and the guard,
   also on Ctrl-C or SIGTERM.

Exit status: 0 when A's error is within ``--tolerance`` percent (default 5), B got every request admitted and no
answer was other than 200 or 429; 1 otherwise; 2 when it could not run; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fuzz import (
    FuzzError,
    GuardServer,
    Interrupted,
    _raise_interrupted,
    orchestrator_running,
    signals_deferred,
)

CLIENT_A = "ratelimit-a"
CLIENT_B = "ratelimit-b"
REQUEST_TIMEOUT_S = 10.0
DRAIN_LIMIT_FACTOR = 3  # the drain gives up after this many times the budget without a 429


@dataclass
class Counts:
    """Answers of one client, by status, and the times its requests were sent."""

    statuses: Counter[int] = field(default_factory=Counter)
    retry_after: list[int] = field(default_factory=list)
    first_sent: float | None = None
    last_sent: float | None = None
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def sent(self) -> int:
        """Requests that got an answer or failed."""
        return sum(self.statuses.values()) + len(self.failures)

    def record(self, sent_at: float, status: int | None, retry_after: str | None, failure: str | None) -> None:
        """Count one request."""
        with self.lock:
            self.first_sent = sent_at if self.first_sent is None else min(self.first_sent, sent_at)
            self.last_sent = sent_at if self.last_sent is None else max(self.last_sent, sent_at)
            if status is None:
                self.failures.append(failure or "no answer")
                return
            self.statuses[status] += 1
            if status == 429 and retry_after and retry_after.isdigit():
                self.retry_after.append(int(retry_after))


class Caller:
    """One keep-alive connection sending ``POST /v1/orchestrate`` as one client."""

    def __init__(self, port: int, client_id: str):
        self.port = port
        self.client_id = client_id
        self.body = json.dumps({"service": "tokenguard", "payload": {"text": "rate"}}).encode()
        self.conn: http.client.HTTPConnection | None = None

    def call(self) -> tuple[int | None, str | None, str | None]:
        """(status, Retry-After, failure)."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
            try:
                self.conn.request("POST", "/v1/orchestrate", self.body,
                                  {"Content-Type": "application/json", "X-Client-ID": self.client_id})
                response = self.conn.getresponse()
                response.read()
                if response.will_close:
                    self.close()
                return response.status, response.getheader("Retry-After"), None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # An idle keep-alive connection the server closed: once more on a fresh one.
                if attempt == 0 and isinstance(exc, http.client.RemoteDisconnected | BrokenPipeError |
                                               ConnectionResetError):
                    continue
                return None, None, f"{type(exc).__name__}: {exc}"
        return None, None, "no answer"

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def drain(port: int, connections: int, budget: int, counts: Counts) -> float:
    """Send as client A as fast as possible until a 429; the seconds it took."""
    started = time.monotonic()
    limited = threading.Event()
    limit = budget * DRAIN_LIMIT_FACTOR

    def worker() -> None:
        caller = Caller(port, CLIENT_A)
        try:
            while not limited.is_set() and counts.sent < limit:
                sent_at = time.monotonic()
                status, retry_after, failure = caller.call()
                counts.record(sent_at, status, retry_after, failure)
                if status == 429:
                    limited.set()
        finally:
            caller.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if not limited.is_set():
        raise FuzzError(f"client A was never refused in {counts.sent} requests (budget {budget}): is the limit set?")
    return time.monotonic() - started


def paced(port: int, client_id: str, rate: float, duration: float, connections: int, counts: Counts,
          start_at: float) -> list[threading.Thread]:
    """Threads that send ``rate`` requests a second as ``client_id`` for ``duration`` seconds from ``start_at``,
    on a fixed schedule spread round-robin over ``connections`` connections (a late request is sent at once)."""
    total = int(rate * duration)

    def worker(offset: int) -> None:
        caller = Caller(port, client_id)
        try:
            for index in range(offset, total, connections):
                due = start_at + index / rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent_at = time.monotonic()
                status, retry_after, failure = caller.call()
                counts.record(sent_at, status, retry_after, failure)
        finally:
            caller.close()

    return [threading.Thread(target=worker, args=(offset,), daemon=True) for offset in range(connections)]


@dataclass
class Settings:
    """The command line."""

    per_minute: int
    duration: float
    over: float
    under: float
    connections: int
    tolerance: float


def parse_args(argv: Sequence[str] | None) -> Settings:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="bin/ratelimit-accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-minute", type=int, default=600, help="SECURITY_MAX_REQUESTS_PER_MINUTE (default 600)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of over-limit load (default 60)")
    parser.add_argument("--over", type=float, default=4.0, help="client A's rate, times the refill rate (default 4)")
    parser.add_argument("--under", type=float, default=0.5,
                        help="client B's rate, times the refill rate (default 0.5)")
    parser.add_argument("--connections", type=int, default=4, help="client A's connections (default 4)")
    parser.add_argument("--tolerance", type=float, default=5.0, help="the error allowed, in percent (default 5)")
    args = parser.parse_args(argv)
    if not 1 <= args.per_minute <= 10_000_000:
        parser.error("--per-minute must be 1 to 10000000 (SECURITY_MAX_REQUESTS_PER_MINUTE's range)")
    if args.duration <= 0 or args.over <= 1 or not 0 < args.under < 1 or args.connections < 1:
        parser.error("--duration > 0, --over > 1, 0 < --under < 1 and --connections >= 1, please")
    return Settings(args.per_minute, args.duration, args.over, args.under, args.connections, args.tolerance)


def measure(settings: Settings, port: int) -> int:
    """Drain, drive, print; the exit status."""
    rate = settings.per_minute / 60.0
    print(f"rate-limit accuracy: SECURITY_MAX_REQUESTS_PER_MINUTE={settings.per_minute} (refill {rate:.3f}/s), "
          f"{settings.duration:g} s, client A at {settings.over:g}x over {settings.connections} connections, "
          f"client B at {settings.under:g}x")
    drained = Counts()
    took = drain(port, settings.connections, settings.per_minute, drained)
    print(f"drain: client A admitted {drained.statuses[200]} of {drained.sent} in {took:.2f} s, then 429")
    a, b = Counts(), Counts()
    start_at = time.monotonic() + 0.05
    threads = paced(port, CLIENT_A, rate * settings.over, settings.duration, settings.connections, a, start_at)
    threads += paced(port, CLIENT_B, rate * settings.under, settings.duration, 1, b, start_at)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert a.first_sent is not None and a.last_sent is not None
    elapsed = a.last_sent - a.first_sent
    admitted = a.statuses[200]
    # The tokens refilled between A's first and last request. The bucket held less than one token at the drain's
    # last 429 and refills for a moment before the run starts: that token or so is inside the error (0.2 % of 600).
    expected = rate * elapsed
    error = (admitted - expected) / expected * 100 if expected else float("inf")
    others = {s: n for s, n in a.statuses.items() if s not in (200, 429)}
    retry = (f"Retry-After {min(a.retry_after)}-{max(a.retry_after)} s (median {statistics.median(a.retry_after):g})"
             if a.retry_after else "no Retry-After seen")
    print(f"client A (over): sent {a.sent}, admitted {admitted}, refused {a.statuses[429]}, other "
          f"{sum(others.values()) + len(a.failures)}; {retry}")
    print(f"  expected {expected:.1f} ({rate:.3f}/s x {elapsed:.2f} s), error {error:+.2f} %")
    b_share = b.statuses[200] / b.sent * 100 if b.sent else 0.0
    print(f"client B (under): sent {b.sent}, admitted {b.statuses[200]} ({b_share:.1f} %)")
    problems = []
    if abs(error) > settings.tolerance:
        problems.append(f"client A's error {error:+.2f} % is over {settings.tolerance:g} %")
    if b.statuses[200] != b.sent:
        problems.append(f"client B got {b.sent - b.statuses[200]} requests not admitted: {dict(b.statuses)} "
                        f"{b.failures[:3]}")
    if others or a.failures:
        problems.append(f"client A got answers other than 200/429: {others} {a.failures[:3]}")
    for problem in problems:
        print(f"FAIL: {problem}")
    print("result: " + ("FAIL" if problems else f"PASS (error within {settings.tolerance:g} %)"))
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    settings = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="aeyon-ratelimit-"))
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    problems: list[str] = []
    status = 2
    guard = GuardServer().start()
    try:
        env = {"TOKENGUARD_URL": guard.url, "SECURITY_MAX_REQUESTS_PER_MINUTE": str(settings.per_minute)}
        with orchestrator_running(env, workdir, problems) as orch:
            status = measure(settings, orch.http_port)
    except FuzzError as exc:
        print(f"ratelimit-accuracy: {exc}")
    except (KeyboardInterrupt, Interrupted):
        print("ratelimit-accuracy: interrupted")
        status = 130
    finally:
        with signals_deferred():
            guard.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(workdir, ignore_errors=True)
    for problem in problems:
        print(f"ratelimit-accuracy: {problem}")
    if problems and status == 0:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
