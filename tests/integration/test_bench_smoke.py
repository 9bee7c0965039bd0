"""The benchmark's smoke run (``bin/bench --smoke``): every figure of issue 6 measured in one short run and written
to its JSON with sane types, and nothing it started left running. No timing thresholds: judging the figures is the
report's job (its goals table), not this test's."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240
LEFTOVER_GRACE_S = 15.0  # after a timeout, bin/bench's children die with it (SIGTERM on their parent's death)
TOOL_MISSING = 2  # bin/bench's exit status when wrk or nginx is missing and cannot be installed
# Not an AEYON_ variable: bin/bench passes those through to nothing, and everything it starts inherits this one.
MARK_VAR = "BENCH_SMOKE_TEST_TAG"

WRK_RUNS = ("direct", "shim", "isolation-baseline", "isolation-hung", "fail-fast")
OPEN_LOOP_RUNS = ("open-direct", "open-shim", "open-shim-high", "breaker-open", "soak-warmup", "soak",
                  "isolation-open-baseline", "isolation-open-hung")
GOALS = ("shim_throughput", "added_latency_p50", "p99_high_rate", "breaker_open_p99", "isolation_p99_ratio",
         "isolation_open_p99_ratio", "gateway_throughput", "idle_pss", "memory_growth", "start_to_ready")


def test_a_smoke_run_measures_every_figure_of_the_goals_and_leaves_nothing_running(tmp_path: Path) -> None:
    summary = tmp_path / "bench.json"
    # TMPDIR: bin/bench's working directory (nginx's configuration, wrk's scripts) lands under tmp_path, so the
    # processes it starts that do not keep their environment (nginx rewrites it) show it in their command line.
    done = _run_tool([str(REPO / "bin" / "bench.py"), "--smoke", "--json", str(summary)], tmp_path, TIMEOUT_S)
    assert done.returncode == 0, f"bin/bench --smoke failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert "command: bin/bench --smoke" in done.stdout and "goals" in done.stdout
    figures = json.loads(summary.read_text())

    runs = {run["name"]: run for run in figures["runs"]}
    assert set(WRK_RUNS) <= set(runs)
    for name in WRK_RUNS:
        assert runs[name]["requests"] > 0 and runs[name]["requests_per_s"] > 0, runs[name]

    open_runs = {run["name"]: run for run in figures["open_loop"]}
    assert set(OPEN_LOOP_RUNS) <= set(open_runs)
    for name in OPEN_LOOP_RUNS:
        _check_open_run(open_runs[name])

    gateway = figures["gateway"]
    assert gateway["threads"] == 16 and gateway["requests"] > 0 and gateway["ok"] == gateway["requests"]
    assert _positive(gateway["requests_per_s"]) and _positive(gateway["p50_ms"]) and _positive(gateway["p99_ms"])

    idle = figures["idle_memory"]
    assert idle["guards"] == 6 and idle["processes"] > 1
    assert _positive(idle["pss_mb"]) and _positive(idle["ready_s"])
    assert set(figures["start_to_ready_s"]) == {"six_guards", "three_guards"}
    assert all(_positive(seconds) for seconds in figures["start_to_ready_s"].values())
    assert figures["start_to_ready_s"]["six_guards"] == idle["ready_s"]
    soak = figures["soak"]
    assert soak["rate"] > 0 and _positive(soak["pss_start_mb"]) and _positive(soak["pss_end_mb"])
    assert isinstance(soak["growth_pct"], int | float)

    goals = {goal["key"]: goal for goal in figures["goals"]}
    assert set(goals) == set(GOALS)
    for goal in goals.values():
        assert isinstance(goal["value"], int | float) and isinstance(goal["met"], bool), goal


def _check_open_run(run: dict[str, Any]) -> None:
    """An open-loop run's figures are there and consistent with each other."""
    assert 0 < run["answered"] <= run["sent"] <= run["scheduled"], run
    assert run["answered"] + run["unanswered"] + sum(run["failures"].values()) == run["scheduled"], run
    assert sum(run["statuses"].values()) == run["answered"], run
    assert _positive(run["achieved_rate"]) and run["connections_opened"] >= 1, run
    assert 0 < run["p50_ms"] <= run["p90_ms"] <= run["p99_ms"] <= run["max_ms"], run
    assert run["cpu_s"] > 0 and run["errors"] == 0, run


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


def _stop_leftovers(tag: str, workdir: Path) -> list[str]:
    """Wait a moment for the processes bin/bench started to be gone, kill those that are not, and name them."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (found := _started_by_the_bench(tag, workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = []
    for pid in found:
        names.append(f"{pid} {_read(f'/proc/{pid}/cmdline').replace(chr(0), ' ').strip()}")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return names


def _started_by_the_bench(tag: str, workdir: Path) -> list[int]:
    """Live processes carrying the test's mark in their environment or its directory in their command line, and
    their descendants (nginx's workers)."""
    needle, path = f"{MARK_VAR}={tag}", str(workdir)
    parents: dict[int, int] = {}
    marked = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        stat = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
        if len(stat) < 2 or stat[0] == "Z":
            continue
        parents[pid] = int(stat[1])
        if needle in _read(f"/proc/{pid}/environ").split("\0") or path in _read(f"/proc/{pid}/cmdline"):
            marked.add(pid)
    return sorted(pid for pid in parents if _descends(pid, marked, parents))


def _descends(pid: int, marked: set[int], parents: dict[int, int]) -> bool:
    seen = set()
    while pid not in seen:
        if pid in marked:
            return True
        seen.add(pid)
        pid = parents.get(pid, 0)
    return False


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _run_tool(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a bin/ script with the test's mark, and fail on anything it leaves running."""
    tag = uuid.uuid4().hex
    env = {**os.environ, MARK_VAR: tag, "TMPDIR": str(tmp_path)}
    try:
        done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    finally:
        leftovers = _stop_leftovers(tag, tmp_path)
    if done.returncode == TOOL_MISSING and ("is needed and missing" in done.stderr
                                            or "could not install" in done.stderr):
        pytest.skip(f"cannot run here: {done.stderr.strip().splitlines()[-1]}")
    assert not leftovers, f"processes left running (killed): {leftovers}"
    return done


def test_the_multi_node_mode_places_every_guard_on_a_member_and_measures_each_node_count(tmp_path: Path) -> None:
    summary = tmp_path / "scale.json"
    done = _run_tool([str(REPO / "bin" / "bench.py"), "--nodes", "1,2", "--duration", "1", "--warmup", "0",
                      "--connections", "8", "--json", str(summary)], tmp_path, 180)
    assert done.returncode == 0, f"bin/bench --nodes failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    runs = json.loads(summary.read_text())["runs"]
    assert [run["nodes"] for run in runs] == [1, 2]
    for run in runs:
        assert run["requests_per_s"] > 0 and run["errors"] == 0 and _positive(run["cpu_ms_leader"]), run
    assert set(runs[0]["placement"].values()) == {"leader"} and runs[0]["cpu_ms_members"] is None
    assert set(runs[1]["placement"].values()) == {"m1"} and _positive(runs[1]["cpu_ms_members"])
    assert len(runs[1]["placement"]) == 6


def test_memory_sample_prints_the_memory_of_each_actor_under_load(tmp_path: Path) -> None:
    done = _run_tool([str(REPO / "bin" / "memory_sample.py"), "--duration", "3", "--settle", "1", "--every", "1",
                      "--rate", "100"], tmp_path, 120)
    assert done.returncode == 0, f"bin/memory-sample failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    first, *samples = done.stdout.strip().splitlines()
    assert first.startswith("memory-sample: 100 req/s through the shim") and " MB over " in first
    assert samples and all(line.startswith("t=") and " MB; grown (kB): " in line for line in samples)
