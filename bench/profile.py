"""Where a leveret worker spends its time per message: py-spy samples the worker process while it
drains N pre-published messages (the drain scenario's settings: concurrency 8, quorum queue,
schema validation, one JSON log line per message to a file), while it takes the same messages
each failing once (``retry``), or while they are published at the latency scenario's fixed rate
(``paced``: the worker idles between deliveries, as it does at 500 msg/s).

    bench/.venv/bin/python -m bench.profile [--messages 10000] [--mode drain|retry|paced]

The samples of the event-loop thread are split into idle (waiting in ``select``: the broker is
the bottleneck) and busy; busy samples are attributed to the package of the innermost frame
(self time), and every leveret function gets its inclusive time (share of busy samples with
it anywhere on the stack).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bench import common

RATE = 250
"""py-spy samples per second."""

LIBRARIES = ("structlog", "pydantic", "pamqp")
"""Besides leveret's own functions, the inclusive time of these libraries' entry points."""


def function_of(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (path/to/file.py)``: lines merged."""
    return re.sub(r":\d+\)$", ")", frame)


def package_of(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> a short package name."""
    path = frame.rsplit("(", 1)[-1]
    if "leveret/amqp/" in path:
        return "leveret.amqp"  # the AMQP client, apart from the rest of leveret
    for name in (
        "leveret",
        "aiormq",
        "aio_pika",
        "pamqp",
        "structlog",
        "pydantic",
        "orjson",
        "bench",
        "asyncio",
        "concurrent",
        "json",
        "logging",
        "contextvars",
        "uuid",
        "datetime",
        "selectors",
        "ssl",
        "threading",
        "traceback",
        "ast",
        "linecache",
    ):
        if f"/{name}/" in path or f"{name}.py" in path or path.startswith(f"{name}/"):
            return name
    return "other (stdlib, C)"


def parse(raw: str) -> dict[str, Any]:
    """Analyse py-spy's raw (collapsed) output, recorded with --threads --idle."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    # The event-loop thread is the one whose stacks run asyncio's loop.
    by_thread: dict[str, int] = collections.Counter()
    for frames, c in stacks:
        if any("run_forever" in f or "_run_once" in f for f in frames):
            by_thread[frames[0]] += c
    loop_thread = max(by_thread, key=lambda t: by_thread[t]) if by_thread else None
    # Start-up (imports) is not per-message work.
    main = [
        (f[1:], c)
        for f, c in stacks
        if f and f[0] == loop_thread and not any("_find_and_load" in fr for fr in f)
    ]
    total = sum(c for _, c in main)
    idle = sum(c for f, c in main if f and ("select (selectors.py" in f[-1] or "poll" in f[-1]))
    busy = [(f, c) for f, c in main if not (f and ("select (selectors.py" in f[-1]))]
    busy_total = sum(c for _, c in busy) or 1
    packages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for frames, c in busy:
        if frames:
            packages[package_of(frames[-1])] += c
            leaves[frames[-1]] += c
    inclusive: collections.Counter[str] = collections.Counter()
    for frames, c in busy:
        for fn in {function_of(fr) for fr in frames}:
            inclusive[fn] += c
    ours = [(k, v / busy_total) for k, v in inclusive.most_common() if "leveret/" in k]
    libs = [
        (k, v / busy_total)
        for k, v in inclusive.most_common()
        if any(f"{lib}/" in k for lib in LIBRARIES)
    ]
    other_threads = sum(c for f, c in stacks if f and f[0] != loop_thread)
    return {
        "samples_loop_thread": total,
        "idle_share": idle / total if total else 0.0,
        "busy_samples": busy_total,
        "other_thread_samples": other_threads,
        "packages": {k: v / busy_total for k, v in packages.most_common()},
        "leveret_inclusive": ours[:20],
        "library_inclusive": libs[:15],
        "top_self": [(k, v / busy_total) for k, v in leaves.most_common(15)],
    }


FOOTPRINT = {
    "python alone": "",
    "aio_pika": "import aio_pika",
    "pika": "import pika",
    "pydantic": "import pydantic",
    "structlog": "import structlog",
    "leveret": "import leveret",
    "leveret worker module": "import bench.systems.leveret_",
}


def import_footprint() -> dict[str, float]:
    """Peak RSS (MiB) of a fresh interpreter after each import: what a worker pays before work."""
    out = {}
    for label, stmt in FOOTPRINT.items():
        hwm = "re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)"
        code = f"{stmt}\nimport re\nprint({hwm})"
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=common.ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        out[label] = int(proc.stdout.strip()) / 1024 if proc.returncode == 0 else float("nan")
    return out


PACED_RATE = 500.0
"""Messages per second published in the ``paced`` mode: the latency scenario's rate."""


def run(url: str, workroot: Path, n: int = 10000, mode: str = "drain") -> dict[str, Any]:
    """Profile a leveret worker through ``n`` messages: ``drain`` (each succeeds), ``retry``
    (each fails once, then succeeds after the 10 ms tier) or ``paced`` (each succeeds, published
    at PACED_RATE while the worker runs)."""
    from bench.scenarios import latency
    from bench.systems import load

    tag = f"prof{uuid.uuid4().hex[:6]}"
    workdir = workroot / f"profile-{tag}"
    workdir.mkdir(parents=True, exist_ok=True)
    system = load("leveret", url, tag, {})
    raw_path = workdir / "pyspy.txt"
    try:
        system.declare()
        payloads = common.make_payloads(tag, n)
        if mode != "paced":
            for p in payloads:
                common.stamp(p)
            system.prefill(payloads)
            common.wait_depth(url, system.queue, n)
        consumers = common.Consumers(system, mode, workdir)
        pid = consumers.procs[0].pid
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--threads",
                "--idle",
                "-o",
                str(raw_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ids = [p["id"] for p in payloads]
            if mode == "paced":
                warm = [common.warm_payload() for _ in range(latency.WARMUP)]
                latency.thread_paced(system, warm, payloads, PACED_RATE, consumers)
            consumers.wait(ids, timeout=120 + n / 50)
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
            consumers.stop()
        rec = consumers.records
        first, last = common.window(rec, ids)
        first = min(first, rec.first_start)
        result = parse(raw_path.read_text()) if raw_path.exists() else {"error": "no py-spy output"}
        if mode == "drain":
            result["import_footprint_mib"] = import_footprint()
        if mode == "paced":
            result["rate"] = PACED_RATE
        result.update(
            mode=mode,
            messages=n,
            rate_hz=RATE,
            msgs_per_s_under_profiler=n / (last - first),
            busy_us_per_message=result.get("busy_samples", 0) / RATE / n * 1e6,
            **consumers.records.accounting(ids),
        )
        return result
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        system.close()
        common.delete(url, system.queues(), system.exchanges())


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default=common.DEFAULT_URL)
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--mode", choices=("drain", "retry", "paced"), default="drain")
    args = p.parse_args()
    import tempfile

    res = run(args.url, Path(tempfile.mkdtemp(prefix="leveret-profile-")), args.messages, args.mode)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
