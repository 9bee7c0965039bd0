"""The multi-node and scale-out measurement (``bin/bench --nodes 1,2 [--cores 2,4,8] [--shims 1,2,4]``).

For each number of CPU cores given (the orchestrator's processes are confined to cores 0..N-1 with
``sched_setaffinity``; wrk and nginx get the cores above them when the machine has more, else they share), for each
number of HTTP shims and for each number of nodes, it

1. starts nginx as a fast guard (every guard URL points at it: the guard is never the bottleneck);
2. starts ``aeyon serve`` (the leader) with the six guards and ``AEYON_SHIMS`` shims, then NODES-1 members
   (``aeyon serve --join``, each may host any guard) on their own admin ports, and waits until the leader has placed
   every guard on a member (with one node every guard stays on the leader);
3. runs wrk through the shim for ``--duration`` seconds after a warm-up, each request to the next of the six guards
   in turn (so the guards' supervisors and workers on every node carry load), and samples the CPU time of each
   node's processes;
4. prints one row per run (req/s, p50, p99, errors, CPU ms per request on the leader and on the members) and stops
   everything, checking that no process is left.

On a machine whose cores are all given to the orchestrator, the nodes share those cores with one another and with
wrk and nginx: a second node then adds message hops, not CPU. The table says which. It prints figures and asserts
nothing; the exit status is 1 when a run had errors or failed.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench

SERVICES = ("tokenguard", "trustguard", "contextguard", "biasguard", "healthguard", "securityguard")
PLACEMENT_TIMEOUT_S = 30.0
ROTATING_SCRIPT = """\
-- Written by bin/bench --nodes: POST to each of the six guards in turn.
local services = {SERVICES}
local i = 0
request = function()
  i = i + 1
  local body = '{"service": "' .. services[(i % #services) + 1] .. '", "payload": {"text": "hello world"}}'
  return wrk.format("POST", "/v1/orchestrate", {["Content-Type"] = "application/json"}, body)
end
""" + bench.COUNTING_WRK_SCRIPT.template.split("local threads = {}", 1)[1]
ROTATING_SCRIPT = ("local threads = {}\n" + ROTATING_SCRIPT).replace(
    "{SERVICES}", "{" + ", ".join(f'"{s}"' for s in SERVICES) + "}")


@dataclass
class ScaleRun:
    """The figures of one configuration."""

    cores: int
    shims: int
    nodes: int
    shared: bool  # wrk and nginx share the orchestrator's cores
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    cpu_ms_leader: float | None
    cpu_ms_members: float | None
    placement: dict[str, str] = field(default_factory=dict)
    answers: str = ""  # the answers by status and error code, when any was not a success


def pinned_spawn(command: list[str], *, env: dict[str, str] | None, log_path: Path,
                 cpus: set[int] | None) -> subprocess.Popen[bytes]:
    """``bench.spawn`` with the child confined to ``cpus`` (its children inherit that)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def prepare() -> None:
        bench.die_with_parent(libc)
        if cpus:
            os.sched_setaffinity(0, cpus)

    with open(log_path, "wb") as log:
        return subprocess.Popen(command, env=env, cwd=bench.ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=prepare)


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    tag: str
    admin_port: int
    log_path: Path
    env: dict[str, str]

    def pids(self) -> list[int]:
        return bench.tagged_pids(self.tag)


def stop_node(node: Node, leader: bool) -> list[str]:
    """Stop a node (``aeyon stop`` for the leader, SIGTERM for a member); the problems seen."""
    problems = []
    if node.process.poll() is None:
        if leader:
            subprocess.run([sys.executable, "-m", "system.cli", "stop", "--now", "--admin-port", str(node.admin_port)],
                           env=node.env, cwd=bench.ROOT, capture_output=True, timeout=bench.STOP_TIMEOUT_S + 5,
                           check=False)
        else:
            node.process.terminate()
    try:
        node.process.wait(bench.STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        problems.append(f"{node.log_path.stem} did not exit in time: killed it")
        node.process.kill()
        node.process.wait()
    problems.extend(bench.kill_leftovers(node.pids, node.log_path.stem))
    return problems


@contextlib.contextmanager
def cluster_running(guard_port: int, nodes: int, shims: int, cpus: set[int] | None, workdir: Path,
                    problems: list[str]) -> Iterator[tuple[Node, list[Node], int]]:
    """A leader with the six guards and ``nodes - 1`` members, every guard placed; yields (leader, members, port)."""
    http_port, admin_port = bench.free_port(), bench.free_port()
    url = f"http://127.0.0.1:{guard_port}"
    env = bench.clean_env({
        **{f"{s.upper()}_URL": url for s in SERVICES},
        "AEYON_PORT": str(http_port), "AEYON_ADMIN_PORT": str(admin_port), "AEYON_LOG_LEVEL": "WARNING",
        "AEYON_SHIMS": str(shims), "SECURITY_MAX_REQUESTS_PER_MINUTE": bench.MAX_RATE_LIMIT,
    })
    started: list[tuple[Node, bool]] = []
    try:
        tag = uuid.uuid4().hex
        leader_env = {**env, bench.TAG_VAR: tag}
        log_path = workdir / f"leader-{nodes}-{shims}.log"
        leader = Node(pinned_spawn([sys.executable, "-m", "system.cli", "serve"], env=leader_env, log_path=log_path,
                                   cpus=cpus), tag, admin_port, log_path, leader_env)
        started.append((leader, True))
        if not bench.wait_for(lambda: bench._answers(leader.process, http_port, "/ready", "aeyon serve", log_path),
                              bench.START_TIMEOUT_S, bench.READY_POLL_S):
            raise bench.BenchError(f"bench: the leader was not ready; its log:\n{bench.log_tail(log_path)}")
        members = []
        for index in range(1, nodes):
            tag = uuid.uuid4().hex
            member_port = bench.free_port()
            member_env = bench.clean_env({"AEYON_ADMIN_PORT": str(member_port), "AEYON_LOG_LEVEL": "INFO",
                                          bench.TAG_VAR: tag})
            log_path = workdir / f"member{index}-{nodes}-{shims}.log"
            member = Node(pinned_spawn([sys.executable, "-m", "system.cli", "serve", "--join",
                                        f"127.0.0.1:{admin_port}", "--name", f"m{index}"],
                                       env=member_env, log_path=log_path, cpus=cpus),
                          tag, member_port, log_path, member_env)
            started.append((member, False))
            members.append(member)

        def placed() -> bool:
            where = _placement(http_port)
            return len(where) == len(SERVICES) and (nodes == 1 or "leader" not in where.values())

        if not bench.wait_for(placed, PLACEMENT_TIMEOUT_S, 0.1):
            raise bench.BenchError(f"bench: the guards were not placed on the members within {PLACEMENT_TIMEOUT_S:g}"
                                   f" s: {_placement(http_port)}")
        yield leader, members, http_port
    finally:
        with bench.signals_deferred():
            for node, is_leader in reversed(started):
                problems.extend(stop_node(node, is_leader))


def _placement(port: int) -> dict[str, str]:
    with contextlib.suppress(Exception):
        status, raw = bench.http_call(port, "GET", "/v1/actors", timeout=5.0)
        if status == 200:
            return dict(json.loads(raw)["state"].get("placement", {}))
    return {}


def measure_config(wrk: str, nginx: str, settings: bench.Settings, cores: int, shims: int, nodes: int,
                   workdir: Path, problems: list[str]) -> ScaleRun:
    total = sorted(os.sched_getaffinity(0))
    cpus = set(total[:cores])
    rest = set(total[cores:])
    shared = not rest
    run_dir = workdir / f"c{cores}-s{shims}-n{nodes}"
    run_dir.mkdir()
    script = run_dir / "rotate.lua"
    script.write_text(ROTATING_SCRIPT)
    with contextlib.ExitStack() as stack:
        if rest:
            # nginx and wrk on the cores the orchestrator does not have (this process's children inherit it).
            os.sched_setaffinity(0, rest)
            stack.callback(os.sched_setaffinity, 0, set(total))
        guard = stack.enter_context(bench.guard_running(nginx, run_dir))
        leader, members, port = stack.enter_context(cluster_running(guard.port, nodes, shims, None if shared else
                                                                    cpus, run_dir, problems))
        url = f"http://127.0.0.1:{port}/v1/orchestrate"
        label = f"{cores} cores, {shims} shim{'s' if shims > 1 else ''}, {nodes} node{'s' if nodes > 1 else ''}"
        if settings.warmup_s:
            print(f"bench: {label}: warm-up {settings.warmup_s} s ...", file=sys.stderr)
            bench.run_wrk(wrk, settings, settings.warmup_s, url, script)
        print(f"bench: {label}: {settings.duration_s} s, {settings.connections} connections ...", file=sys.stderr)
        before = [bench.cpu_seconds(leader.pids()), bench.cpu_seconds(p for m in members for p in m.pids())]
        output = bench.run_wrk(wrk, settings, settings.duration_s, url, script)
        after = [bench.cpu_seconds(leader.pids()), bench.cpu_seconds(p for m in members for p in m.pids())]
        figures = bench.parse_wrk(output)
        done = figures["requests"] or 1
        if figures["non_2xx"] or any(figures["socket_errors"].values()) or figures["requests"] < 100:
            for node in [leader, *members]:
                problems.append(f"{label}: the tail of {node.log_path.name}:\n{bench.log_tail(node.log_path, 15)}")
        return ScaleRun(
            cores=cores, shims=shims, nodes=nodes, shared=shared,
            requests_per_s=figures["requests_per_s"], p50_ms=figures["p50_ms"], p99_ms=figures["p99_ms"],
            errors=figures["non_2xx"] + sum(figures["socket_errors"].values()),
            cpu_ms_leader=round((after[0] - before[0]) * 1000 / done, 3),
            cpu_ms_members=round((after[1] - before[1]) * 1000 / done, 3) if members else None,
            placement=_placement(port),
            answers=", ".join([f"{key} {count}" for key, count in figures["statuses"].items()
                               if not key.startswith("2")]
                              + [f"socket {kind} {count}" for kind, count in figures["socket_errors"].items()
                                 if count]))


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise ValueError(f"{text!r}: give positive integers separated by commas")
    return values


def run(argv: Sequence[str], settings: bench.Settings, nodes_text: str, cores_text: str | None,
        shims_text: str | None) -> int:
    available = len(os.sched_getaffinity(0))
    cores_list = _ints(cores_text) if cores_text else [available]
    cores_list = [c for c in cores_list if c <= available] or [available]
    nodes_list = _ints(nodes_text)
    shims_list = _ints(shims_text) if shims_text else [1]
    wrk = bench.ensure_tool("wrk", "wrk")
    nginx = bench.ensure_tool("nginx", "nginx-light")
    started = datetime.datetime.now(datetime.timezone.utc)
    info = bench.machine()
    problems: list[str] = []
    runs: list[ScaleRun] = []
    workdir = Path(tempfile.mkdtemp(prefix="aeyon-scale-"))
    try:
        for cores in cores_list:
            for shims in shims_list:
                for nodes in nodes_list:
                    try:
                        runs.append(measure_config(wrk, nginx, settings, cores, shims, nodes, workdir, problems))
                    except bench.BenchError as exc:
                        problems.append(str(exc))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [
        f"Aeyon bench, multi-node — {started:%Y-%m-%d %H:%M} UTC",
        f"machine: {info['cpu']} x {info['cores']} cores, {info['memory_gib']} GiB, Linux {info['kernel']}, "
        f"Python {info['python']}, thespian {info['thespian']}",
        f"command: bin/bench {' '.join(argv)}",
        f"{'cores':>5}  {'shims':>5}  {'nodes':>5}  {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'errors':>6}  "
        f"{'cpu ms/req leader':>17}  {'members':>7}  wrk+nginx",
    ]
    for r in runs:
        lines.append(f"{r.cores:>5}  {r.shims:>5}  {r.nodes:>5}  {r.requests_per_s:>8.0f}  {bench._ms(r.p50_ms):>7}  "
                     f"{bench._ms(r.p99_ms):>7}  {r.errors:>6}  {r.cpu_ms_leader or 0:>17.3f}  "
                     f"{'-' if r.cpu_ms_members is None else f'{r.cpu_ms_members:.3f}':>7}  "
                     f"{'shared cores' if r.shared else 'own cores'}")
    lines.append(f"wrk: {settings.connections} connections, {settings.threads} thread(s), {settings.duration_s} s "
                 f"after a {settings.warmup_s} s warm-up, each request to the next of the six guards; nodes: the "
                 "leader plus members that may host any guard (every guard on a member when there is one); cores: "
                 "the orchestrator's processes confined to that many cores")
    print("\n".join(lines))
    for r in runs:
        if r.answers:
            lines.append(f"{r.cores} cores, {r.shims} shims, {r.nodes} nodes: errors: {r.answers}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if settings.json_path:
        settings.json_path.write_text(json.dumps({"started": started.isoformat(), "machine": info,
                                                  "runs": [asdict(r) for r in runs], "problems": problems},
                                                 indent=2))
    return 1 if problems or any(r.errors or not r.requests_per_s for r in runs) else 0

