"""The memory of an idle ``leveret worker``: its peak resident set (VmHWM) on an empty queue, and
the packages the process imported (``python -X importtime``).

    .venv/bin/python -m bench.worker_rss [--app leveret.demo:app] [--runs 5]

The worker is the CLI's, as a user starts it: ``python -m leveret.cli --json-logs worker APP``.
It runs in a vhost of its own (made with ``rabbitmqctl``, the app's topology applied with
``leveret topology apply``, deleted afterwards). Each run waits for the worker's
``worker.consuming`` line and a few seconds more, reads VmHWM from ``/proc/PID/status`` and stops
it with SIGTERM; the median of the runs is printed. One more run under ``-X importtime`` lists
the packages outside the standard library that the worker imported, by import time.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench import common

READY = b"worker.consuming"
"""The worker's log event once it consumes its queues."""


@contextlib.contextmanager
def own_vhost(url: str) -> Iterator[str]:
    """A vhost for this measurement, with the URL's user allowed everything; deleted after."""
    name = f"leveret-rss-{uuid.uuid4().hex[:8]}"
    user = url.split("//", 1)[1].split(":", 1)[0]
    subprocess.run(["rabbitmqctl", "add_vhost", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", name, user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield url.rstrip("/") + "/" + name
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True)


def cli(*args: str, python_flags: Sequence[str] = ()) -> list[str]:
    return [sys.executable, *python_flags, "-m", "leveret.cli", *args]


def idle_worker(
    url: str, app: str, log: Path, settle: float, python_flags: Sequence[str] = ()
) -> int:
    """Start a worker, let it idle ``settle`` seconds once ready, stop it; its VmHWM in KiB."""
    env = {**os.environ, "LEVERET_URL": url}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cli("--json-logs", "worker", app, python_flags=python_flags),
            cwd=common.ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while READY not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the worker never logged worker.consuming:\n{tail}")
            time.sleep(0.1)
        time.sleep(settle)
        return common.hwm_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def imported_packages(importtime_log: str) -> list[tuple[str, float]]:
    """Packages outside the standard library in ``-X importtime`` output, with their self time
    summed (ms), slowest first."""
    self_us: dict[str, int] = defaultdict(int)
    for line in importtime_log.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _cumulative, name = (part.strip() for part in line[12:].split("|"))
        if not own.isdigit():  # the header line
            continue
        top = name.split(".", 1)[0]
        if top not in sys.stdlib_module_names and not top.startswith("_"):
            self_us[top] += int(own)
    # A failed import is listed too (structlog tries rich, colorama, twisted ...).
    found = {k: v for k, v in self_us.items() if importlib.util.find_spec(k) is not None}
    return sorted(((k, v / 1000) for k, v in found.items()), key=lambda kv: -kv[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default=os.environ.get("BENCH_URL", common.DEFAULT_URL))
    p.add_argument("--app", default="leveret.demo:app", help="the worker's MODULE:APP")
    p.add_argument("--runs", type=int, default=5, help="workers measured, one after another")
    p.add_argument("--settle", type=float, default=3.0, help="seconds idle before the reading")
    args = p.parse_args(argv)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"leveret-rss-{uuid.uuid4().hex[:8]}"
    workdir.mkdir(parents=True)
    with own_vhost(args.url) as url:
        applied = subprocess.run(
            cli("topology", "apply", "--app", args.app, "--url", url),
            cwd=common.ROOT,
            capture_output=True,
            text=True,
        )
        if applied.returncode != 0:
            print(f"worker_rss: topology apply failed: {applied.stderr.strip()}", file=sys.stderr)
            return 1
        peaks = [
            idle_worker(url, args.app, workdir / f"worker-{i}.log", args.settle) / 1024
            for i in range(args.runs)
        ]
        traced = workdir / "importtime.log"
        idle_worker(url, args.app, traced, 0.0, python_flags=("-X", "importtime"))
    packages = imported_packages(traced.read_text(errors="replace"))
    runs = ", ".join(f"{v:.1f}" for v in peaks)
    print(f"leveret worker {args.app}, idle on an empty queue")
    print(f"VmHWM: median {statistics.median(peaks):.1f} MiB (runs: {runs})")
    print("imported, outside the standard library (self time of their modules):")
    for name, ms in packages:
        print(f"  {name:<24} {ms:7.1f} ms")
    for log in workdir.iterdir():
        log.unlink()
    workdir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
