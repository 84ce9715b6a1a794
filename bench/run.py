"""Run the benchmark suite: leveret beside raw pika, raw aio-pika, Dramatiq, Celery and FastStream
on one local RabbitMQ, interleaved (round 1: every system in turn for each scenario, then
round 2 ...), and print one table of medians with each system's ratio to leveret.

    bench/.venv/bin/python bench/run.py                 # the full run (make bench)
    bench/.venv/bin/python bench/run.py --quick         # 500 messages, 1 round, no extras
    bench/.venv/bin/python bench/run.py --systems leveret,pika --scenarios drain,retry
    .venv/bin/python bench/run.py --quick --messages 100 --no-wait-quiet  # as make bench-smoke

Each measurement runs in a fresh driver process (``bench/driver.py``); consumers are processes
of their own. Results go to ``bench/results/last.json`` (``quick.json`` for ``--quick``) and,
for a full run, ``docs/performance.md`` and ``docs/bench-*.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, report
from bench.scenarios import SCENARIOS, scale
from bench.systems import ALL

RESULTS = common.ROOT / "bench" / "results"
DOC = common.ROOT / "docs" / "performance.md"
MAX_ATTEMPTS = 3
"""A measurement that fails, or during which the broker dropped connections, is run again."""

DEFAULT_SIZES = {
    "publish_1": 5000,
    "publish_8": 5000,
    "publish_batch": 10000,
    "publish_concurrent": 10000,
    "drain": 10000,
    "latency": 5000,
    "retry": 2000,
}
"""Messages per measurement in a full run: ``--messages`` sets them all."""
LATENCY_ROUNDS = 5
"""Rounds of the latency scenario in a full run (the others run ``--rounds``): its p99 is the
50th slowest of 5,000 deliveries, which the broker's disk moves from one round to the next by
more than either client, so it takes more rounds to settle."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default=os.environ.get("BENCH_URL", common.DEFAULT_URL))
    p.add_argument("--quick", action="store_true", help="500 messages, 1 round, no scale/profile")
    p.add_argument("--messages", type=int, help="messages per measurement (every scenario)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument("--systems", default=",".join(ALL), help=f"comma-separated, of {ALL}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"of {list(SCENARIOS)}")
    p.add_argument("--rate", type=float, default=500.0, help="offered rate of the latency run")
    p.add_argument(
        "--latency-rounds",
        type=int,
        help=f"rounds of the latency scenario (default {LATENCY_ROUNDS}, or --rounds if more; "
        "--rounds with --quick); the rounds past --rounds run latency alone",
    )
    p.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale curves: workers, prefetch, queue type, payload size, offered load "
        "(default: on unless --quick)",
    )
    p.add_argument(
        "--curves",
        help=f"comma-separated, of {list(scale.CURVES)} (default: all; implies --scale)",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="py-spy profile of a leveret worker draining (default: on unless --quick)",
    )
    p.add_argument(
        "--wait-quiet",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for a quiet machine before each measurement, and run again one that shared "
        "the CPU with other programs (--no-wait-quiet: a smoke run, whose figures mean nothing)",
    )
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/last.json)")
    p.add_argument(
        "--doc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/performance.md and plots (default: on unless --quick)",
    )
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the table of a results file and write the docs",
    )
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in args.systems:
        if s not in ALL:
            p.error(f"unknown system {s!r}; known: {', '.join(ALL)}")
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    full = not args.quick
    args.rounds = args.rounds or (3 if full else 1)
    args.latency_rounds = args.latency_rounds or max(
        args.rounds, LATENCY_ROUNDS if full else args.rounds
    )
    args.curves = [c.strip() for c in args.curves.split(",") if c.strip()] if args.curves else None
    for c in args.curves or []:
        if c not in scale.CURVES:
            p.error(f"unknown curve {c!r}; known: {', '.join(scale.CURVES)}")
    if args.scale is None and args.curves:
        args.scale = True
    args.scale = full if args.scale is None else args.scale
    args.profile = full if args.profile is None else args.profile
    args.doc = full if args.doc is None else args.doc
    args.out = args.out or RESULTS / ("last.json" if full else "quick.json")
    if args.messages:
        args.sizes = dict.fromkeys(SCENARIOS, args.messages)
    elif args.quick:
        args.sizes = dict.fromkeys(SCENARIOS, 500)
    else:
        args.sizes = dict(DEFAULT_SIZES)
    return args


class Sentinel:
    """An idle AMQP connection that tells whether the broker dropped connections meanwhile.

    Other programs on a shared machine (a test suite that calls ``rabbitmqctl
    close_all_connections`` or ``stop_app``) can break a measurement; the sentinel notices, and
    the measurement is run again.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None
        self.server: dict[str, Any] = {}

    def arm(self) -> None:
        import pika

        if self.conn is None or not self.conn.is_open:
            params = pika.URLParameters(self.url)
            params.heartbeat = 0
            params.client_properties = {"connection_name": "bench-sentinel"}
            self.conn = pika.BlockingConnection(params)
            props = self.conn._impl.server_properties
            self.server = {
                k: v.decode() if isinstance(v, bytes) else v
                for k, v in props.items()
                if k in ("product", "version", "platform")
            }

    def intact(self) -> bool:
        try:
            self.conn.process_data_events(0)
            return bool(self.conn.is_open)
        except Exception:
            self.conn = None
            return False


class CpuMeter:
    """CPU used by other programs (not this run's processes, not the broker) on a shared machine.

    Busy time of the whole machine (``/proc/stat``) minus this process and its waited-for
    descendants (``getrusage``: the driver waits for its consumers) minus the broker's own
    process (the one listening on the AMQP port), which the measurement itself keeps busy.
    """

    FOREIGN_LIMIT = 0.3
    """Cores used by others, on average, above which a measurement counts as contended."""
    WAIT_BUDGET = 300.0
    """Seconds a run may spend in all waiting for a quiet machine before a measurement."""

    def __init__(self, url: str) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.broker_pid = self._listener(url)
        self.waited = 0.0

    @staticmethod
    def _listener(url: str) -> int | None:
        import re
        from urllib.parse import urlsplit

        port = urlsplit(url).port or 5672
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if f":{port} " in line:
                m = re.search(r"pid=(\d+)", line)
                if m:
                    return int(m.group(1))
        return None

    def _busy(self) -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / self.tick

    def _broker(self) -> float:
        if self.broker_pid is None:
            return 0.0
        try:
            parts = Path(f"/proc/{self.broker_pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(parts[11]) + int(parts[12])) / self.tick

    def snapshot(self) -> tuple[float, float, float, float]:
        import resource

        mine = sum(
            r.ru_utime + r.ru_stime
            for r in (
                resource.getrusage(resource.RUSAGE_SELF),
                resource.getrusage(resource.RUSAGE_CHILDREN),
            )
        )
        return time.monotonic(), self._busy(), mine, self._broker()

    @staticmethod
    def foreign(
        a: tuple[float, float, float, float], b: tuple[float, float, float, float]
    ) -> float:
        """Average cores used by others between two snapshots."""
        wall = b[0] - a[0]
        if wall <= 0:
            return 0.0
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2]) - (b[3] - a[3])) / wall)

    def wait_quiet(self) -> float:
        """Probe for a second; wait (within the run's budget) while others use the CPU."""
        while True:
            a = self.snapshot()
            time.sleep(1.0)
            load = self.foreign(a, self.snapshot())
            if load < self.FOREIGN_LIMIT or self.waited >= self.WAIT_BUDGET:
                return load
            time.sleep(4.0)
            self.waited += 5.0


def run_one(
    args: argparse.Namespace,
    sentinel: Sentinel,
    meter: CpuMeter,
    system: str,
    scenario: str,
    n: int,
    params: dict[str, Any],
    workroot: Path,
) -> dict[str, Any]:
    """One measurement in a driver process, run again if it failed or was disturbed."""
    result: dict[str, Any] = {}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        tag = f"{int(time.time()) % 100000}{uuid.uuid4().hex[:6]}"
        workdir = workroot / f"{scenario}-{system}-{tag}"
        spec = {
            "system": system,
            "scenario": scenario,
            "n": n,
            "params": params,
            "url": args.url,
            "tag": tag,
            "workdir": str(workdir),
        }
        workdir.mkdir(parents=True)
        try:
            sentinel.arm()
        except Exception as exc:
            result = {"status": "error", "error": f"broker unreachable: {exc}"}
            time.sleep(5)
            continue
        if args.wait_quiet:
            meter.wait_quiet()
        before = meter.snapshot()
        with (workdir / "driver.log").open("wb") as log:
            try:
                proc = subprocess.run(
                    [sys.executable, "-m", "bench.driver", json.dumps(spec)],
                    cwd=common.ROOT,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    timeout=900,
                    env={**os.environ, "PYTHONPATH": str(common.ROOT)},
                )
                lines = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("RESULT ")]
                result = (
                    json.loads(lines[-1][7:])
                    if lines
                    else {
                        "status": "error",
                        "error": f"driver exited {proc.returncode} without a result",
                    }
                )
            except subprocess.TimeoutExpired:
                result = {"status": "error", "error": "driver timed out after 900 s"}
        foreign = CpuMeter.foreign(before, meter.snapshot())
        dropped = not sentinel.intact()
        contended = args.wait_quiet and foreign > CpuMeter.FOREIGN_LIMIT
        disturbed = dropped or contended
        result["attempt"] = attempt
        result["foreign_cpu"] = round(foreign, 3)
        if disturbed:
            result["disturbed"] = "broker dropped connections" if dropped else "cpu contention"
        last_try = attempt == MAX_ATTEMPTS
        if result.get("status") != "error" and (not disturbed or last_try):
            shutil.rmtree(workdir, ignore_errors=True)
            return result
        why = (
            "broker dropped connections"
            if dropped
            else f"other programs used {foreign:.2f} cores"
            if contended
            else result.get("error", "")[:300]
        )
        print(f"    ! {system} {scenario} attempt {attempt}: {why}", file=sys.stderr, flush=True)
        # The driver deletes its queues itself, unless the broker was away at that moment.
        subprocess.run(
            [sys.executable, "-m", "bench.driver", json.dumps({**spec, "cleanup": True})],
            cwd=common.ROOT,
            capture_output=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(common.ROOT)},
        )
        if disturbed:
            time.sleep(3)
    return result


def environment(args: argparse.Namespace, sentinel: Sentinel) -> dict[str, Any]:
    mem_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    versions = {}
    for dist in (
        "leveret",
        "pika",
        "aio-pika",
        "aiormq",
        "pamqp",
        "dramatiq",
        "celery",
        "kombu",
        "amqp",
        "faststream",
        "pydantic",
        "structlog",
        "orjson",
        "py-spy",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=common.ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "leveret"], cwd=common.ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": sentinel.server.get("version", "?"),
        "erlang": sentinel.server.get("platform", "?"),
        "versions": versions,
        "leveret_commit": commit + (" (leveret/ has uncommitted changes)" if dirty else ""),
        "command": " ".join([python_shown(), "bench/run.py", *sys.argv[1:]]),
        "rounds": args.rounds,
        "latency_rounds": args.latency_rounds,
        "rotated": True,  # see plan()
        "sizes": args.sizes,
        "rate": args.rate,
        "load_before": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def plan(args: argparse.Namespace) -> list[tuple[int, str, str]]:
    """The measurements of the rounds, in order: (round, scenario, system).

    Interleaved: each round runs every system in turn for each scenario, starting one system
    further on than the round before (A B C, then B C A, ...), so that no system always runs
    first after another scenario, or after a given peer. The latency scenario has rounds of
    its own (``--latency-rounds``); past the others', it runs alone.
    """
    last = {s: args.latency_rounds if s == "latency" else args.rounds for s in args.scenarios}
    systems = list(args.systems)
    return [
        (rnd, scenario, system)
        for rnd in range(1, max(last.values(), default=0) + 1)
        for scenario in args.scenarios
        if rnd <= last[scenario]
        for system in _rotated(systems, rnd - 1)
    ]


def _rotated(items: list[str], by: int) -> list[str]:
    by %= len(items) or 1
    return items[by:] + items[:by]


def python_shown() -> str:
    """This interpreter as a path relative to the repository when it is in one (a venv's)."""
    python = Path(sys.executable)
    return str(python.relative_to(common.ROOT)) if python.is_relative_to(common.ROOT) else "python"


def render(path: Path) -> int:
    data = json.loads(path.read_text())
    print(report.table(data))
    pngs = report.plots(data, DOC.parent)
    DOC.write_text(report.markdown(data, pngs))
    print(f"wrote {DOC.relative_to(common.ROOT)} and {', '.join(p.name for p in pngs)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.render)
    sentinel = Sentinel(args.url)
    meter = CpuMeter(args.url)
    try:
        sentinel.arm()
    except Exception as exc:
        print(f"bench: no broker at {args.url.split('@')[-1]}: {exc}", file=sys.stderr)
        return 2
    env = environment(args, sentinel)
    workroot = Path(tempfile.mkdtemp(prefix="leveret-bench-"))
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    what = f"{len(args.systems)} systems x {len(args.scenarios)} scenarios x {args.rounds} rounds"
    if "latency" in args.scenarios and args.latency_rounds != args.rounds:
        what += f" ({args.latency_rounds} of latency)"
    print(f"bench: {what}; work files in {workroot}", file=sys.stderr, flush=True)
    for rnd, scenario, system in plan(args):
        params = {"rate": args.rate} if scenario == "latency" else {}
        n = args.sizes[scenario]
        res = run_one(args, sentinel, meter, system, scenario, n, params, workroot)
        runs.append(
            {
                "round": rnd,
                "scenario": scenario,
                "system": system,
                "n": n,
                "params": params,
                "result": res,
            }
        )
        print(
            f"  round {rnd} {scenario:<13} {system:<10} {report.brief(scenario, res)}",
            file=sys.stderr,
            flush=True,
        )
    curves: list[dict[str, Any]] = []
    if args.scale:
        for point in scale.points(args.systems, args.curves):
            res = run_one(
                args,
                sentinel,
                meter,
                point["system"],
                point["scenario"],
                point["n"],
                point["params"],
                workroot,
            )
            curves.append({**point, "result": res})
            print(
                f"  scale {point['curve']:<10} {point['x']!s:<6} {point['system']:<10} "
                f"{report.brief(point['scenario'], res)}",
                file=sys.stderr,
                flush=True,
            )
    prof: dict[str, Any] | None = None
    if args.profile:
        from bench import profile

        prof = {}
        for mode, n in (
            ("drain", args.sizes["drain"]),
            ("retry", args.sizes["retry"] * 2),
            ("paced", args.sizes["latency"]),
        ):
            print(
                f"  profiling a leveret worker: {mode}, {n} messages (py-spy)",
                file=sys.stderr,
                flush=True,
            )
            for _attempt in range(MAX_ATTEMPTS):
                if args.wait_quiet:
                    meter.wait_quiet()
                before = meter.snapshot()
                prof[mode] = profile.run(args.url, workroot, n=n, mode=mode)
                prof[mode]["foreign_cpu"] = round(CpuMeter.foreign(before, meter.snapshot()), 3)
                if not args.wait_quiet or prof[mode]["foreign_cpu"] <= CpuMeter.FOREIGN_LIMIT:
                    break
                print("    ! profile: other programs were busy; again", file=sys.stderr, flush=True)
    env["seconds"] = round(time.monotonic() - started)
    env["quiet_wait_s"] = meter.waited
    env["load_after"] = os.getloadavg()
    data = {"environment": env, "runs": runs, "scale": curves, "profile": prof}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, default=str))
    print(report.table(data))
    shown = args.out.relative_to(common.ROOT) if args.out.is_relative_to(common.ROOT) else args.out
    print(f"\nresults: {shown} ({env['seconds']} s)")
    if args.doc:
        pngs = report.plots(data, DOC.parent)
        DOC.write_text(report.markdown(data, pngs))
        print(f"wrote {DOC.relative_to(common.ROOT)} and {', '.join(p.name for p in pngs)}")
    bad = report.problems(data)
    for line in bad:
        print(f"bench: {line}", file=sys.stderr)
    shutil.rmtree(workroot, ignore_errors=True) if not bad else None
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
