"""Where the orchestrator's memory goes under load: the PSS of each actor process, sampled while open-loop traffic
runs (``bin/memory-sample [--duration S] [--rate R] [--every S]``).

It starts nginx as a fast guard and ``aeyon serve`` routing tokenguard to it (``bin/bench``'s helpers), sends
``--rate`` requests/s through the shim for ``--duration`` seconds (``bin/openloop.py``), takes a first sample
after ``--settle`` seconds, then one every ``--every`` seconds, and prints the total PSS and, per actor, how many
kB it grew since the first sample (actors that moved by less than 100 kB are left out). It prints figures and
asserts nothing; everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
import openloop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bin/memory-sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=300, help="seconds of traffic (default 300)")
    parser.add_argument("--rate", type=int, default=1200, help="requests/s through the shim (default 1200)")
    parser.add_argument("--settle", type=int, default=15, help="seconds before the first sample (default 15)")
    parser.add_argument("--every", type=int, default=60, help="seconds between samples (default 60)")
    args = parser.parse_args(argv)
    problems: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="aeyon-memory-"))
    with bench.guard_running(bench.ensure_tool("nginx", "nginx-light"), workdir) as guard, \
            bench.orchestrator_running({"TOKENGUARD_URL": f"http://127.0.0.1:{guard.port}"}, workdir,
                                       problems) as orch:
        target = openloop.Target("127.0.0.1", orch.http_port, bench.SHIM_PATH, bench.SHIM_BODY)
        load = threading.Thread(target=openloop.run, args=(target, args.rate, args.duration), daemon=True)
        load.start()
        time.sleep(args.settle)
        first = bench.pss_by_actor(orch)
        started = time.monotonic()
        print(f"memory-sample: {args.rate} req/s through the shim; first sample {args.settle} s in: "
              f"{bench._mb(sum(first.values())):.1f} MB over {len(first)} processes", flush=True)
        while load.is_alive():
            load.join(args.every)
            now = bench.pss_by_actor(orch)
            grown = {name: kb - first.get(name, 0) for name, kb in sorted(now.items())
                     if abs(kb - first.get(name, 0)) >= 100}
            print(f"t={time.monotonic() - started:5.0f} s  total {bench._mb(sum(now.values())):.1f} MB; grown (kB): "
                  + (", ".join(f"{name} {kb:+,}" for name, kb in grown.items()) or "none"), flush=True)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
