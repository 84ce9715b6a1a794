"""What every system and scenario shares: payloads, the per-message record, consumer processes,
broker housekeeping (depth, delete, read back ids) and the peak RSS of a process tree.

Only the standard library and pika here: consumer processes of every system import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "amqp://127.0.0.1:5672/"
"""When BENCH_URL is unset. Without credentials every client here logs in as RabbitMQ's default
user (guest)."""
WARM_PREFIX = "warm-"
"""Ids of warm-up messages: sent before the clock starts, counted but not timed."""


# --- payloads -------------------------------------------------------------------------------


def make_payloads(tag: str, n: int, size: int = 200, *, prefix: str = "") -> list[dict[str, Any]]:
    """``n`` JSON payloads of about ``size`` bytes each, with unique ids.

    The same fields for every system: ``id`` (the benchmark's own id, counted at the end),
    ``n``, ``sent`` (stamped just before publishing), ``user_id``, ``format`` and ``pad``.
    """
    ids = [f"{prefix}{tag}-{i:07d}" for i in range(n)]
    probe = {"id": ids[0] if ids else "x", "n": n, "sent": time.time(), "user_id": n + 1}
    probe.update({"format": "csv", "pad": ""})
    pad = "x" * max(0, size - len(json.dumps(probe, separators=(",", ":"))))
    return [
        {"id": i, "n": k, "sent": 0.0, "user_id": k + 1, "format": "csv", "pad": pad}
        for k, i in enumerate(ids)
    ]


def stamp(payload: dict[str, Any]) -> dict[str, Any]:
    """Write the send time into a payload (wall clock: the consumer compares with its own)."""
    payload["sent"] = time.time()
    return payload


# --- the per-message record (consumer side) --------------------------------------------------


class Recorder:
    """Appends one line per handled attempt to ``<dir>/<pid>.rec``, unbuffered.

    ``ok <id> <start> <end> <sent>`` for a success, ``fail <id> <start>`` for an attempt that
    raised on purpose. One ``os.write`` per line (a few microseconds, the same for every system),
    so a worker killed or forked (Celery's prefork pool) loses nothing it recorded.
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or os.environ.get("BENCH_RECORDS", "")
        self._fd: int | None = None
        self._pid = 0

    def _out(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:  # a forked child writes a file of its own
            path = os.path.join(self.directory, f"{pid}.rec")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._pid = pid
        return self._fd

    def ok(self, payload_id: str, start: float, sent: float) -> None:
        line = f"ok {payload_id} {start:.6f} {time.time():.6f} {sent:.6f}\n"
        os.write(self._out(), line.encode())

    def fail(self, payload_id: str, start: float) -> None:
        os.write(self._out(), f"fail {payload_id} {start:.6f}\n".encode())


def env_mode() -> str:
    """The consumer's mode: ``drain`` (succeed) or ``retry`` (fail the first attempt)."""
    return os.environ.get("BENCH_MODE", "drain")


# --- reading the records (driver side) --------------------------------------------------------


class Records:
    """Everything consumers recorded in a directory, read incrementally."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._offsets: dict[Path, int] = {}
        self.ok: dict[str, list[tuple[float, float, float]]] = {}
        self.fails: dict[str, int] = {}
        self.first_start = float("inf")

    def poll(self) -> None:
        for path in sorted(self.directory.glob("*.rec")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            for line in chunk[:end].decode().splitlines():
                parts = line.split()
                start = float(parts[2])
                self.first_start = min(self.first_start, start)
                if parts[0] == "ok":
                    self.ok.setdefault(parts[1], []).append(
                        (start, float(parts[3]), float(parts[4]))
                    )
                else:
                    self.fails[parts[1]] = self.fails.get(parts[1], 0) + 1

    def done(self, ids: Iterable[str]) -> bool:
        return all(i in self.ok for i in ids)

    def wait(
        self, ids: Sequence[str], timeout: float, alive: Callable[[], bool] = lambda: True
    ) -> bool:
        """Poll until every id in ``ids`` succeeded; False on timeout or a dead consumer."""
        deadline = time.monotonic() + timeout
        pending = set(ids)
        while True:
            self.poll()
            pending = {i for i in pending if i not in self.ok}
            if not pending:
                return True
            if time.monotonic() > deadline or not alive():
                return False
            time.sleep(0.1)

    def accounting(self, ids: Sequence[str]) -> dict[str, int]:
        """Lost (never succeeded) and duplicates (succeeded more than once) among ``ids``."""
        lost = sum(1 for i in ids if i not in self.ok)
        dups = sum(len(self.ok[i]) - 1 for i in ids if i in self.ok)
        return {"expected": len(ids), "lost": lost, "duplicates": dups}


# --- consumer processes -----------------------------------------------------------------------


class ConsumerProcess:
    """A consumer (worker) process started from an argv, its output in a log file."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            list(argv), cwd=ROOT, env=full_env, stdout=self._out, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_kib(self) -> int:
        """Peak resident set (VmHWM) of the process and every descendant, summed."""
        return tree_hwm_kib(self.proc.pid)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (every system stops gracefully on it), then SIGKILL after ``timeout``."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def descendants(pid: int) -> list[int]:
    """The process and all its descendants, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def hwm_kib(pid: int) -> int:
    """VmHWM (peak resident set) of one process, in KiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_hwm_kib(pid: int) -> int:
    return sum(hwm_kib(p) for p in descendants(pid))


def kill_tree(pid: int) -> None:
    for p in reversed(descendants(pid)):
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


# --- the broker, through plain pika ----------------------------------------------------------


def _connect(url: str) -> Any:
    import pika

    return pika.BlockingConnection(pika.URLParameters(url))


def depths(url: str, queues: Sequence[str]) -> dict[str, int | None]:
    """Messages ready in each queue (None: the queue does not exist)."""
    import pika.exceptions

    conn = _connect(url)
    out: dict[str, int | None] = {}
    try:
        ch = conn.channel()
        for q in queues:
            try:
                out[q] = ch.queue_declare(q, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                out[q] = None
                ch = conn.channel()
    finally:
        if conn.is_open:
            conn.close()
    return out


def wait_depth(url: str, queue: str, expected: int, timeout: float = 30.0) -> int:
    """Wait until ``queue`` holds ``expected`` ready messages; return what it holds."""
    deadline = time.monotonic() + timeout
    while True:
        got = depths(url, [queue])[queue] or 0
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def delete(url: str, queues: Sequence[str] = (), exchanges: Sequence[str] = ()) -> None:
    """Delete queues and exchanges; missing ones are fine."""
    import pika.exceptions

    conn = _connect(url)
    try:
        ch = conn.channel()
        for q in queues:
            try:
                ch.queue_delete(q)
            except pika.exceptions.ChannelClosedByBroker:
                ch = conn.channel()
        for x in exchanges:
            try:
                ch.exchange_delete(x)
            except pika.exceptions.ChannelClosedByBroker:
                ch = conn.channel()
    finally:
        if conn.is_open:
            conn.close()


def read_ids(
    url: str, queue: str, extract: Callable[[bytes], str], timeout: float = 120
) -> list[str]:
    """Consume (auto-ack) everything in ``queue`` and return the benchmark ids of the bodies."""
    conn = _connect(url)
    ids: list[str] = []
    try:
        ch = conn.channel()
        total = ch.queue_declare(queue, passive=True).method.message_count
        ch.basic_qos(prefetch_count=2000)
        deadline = time.monotonic() + timeout
        for method, _props, body in ch.consume(queue, auto_ack=True, inactivity_timeout=2.0):
            if method is None:
                break
            ids.append(extract(body))
            if len(ids) >= total or time.monotonic() > deadline:
                break
        ch.cancel()
    finally:
        if conn.is_open:
            conn.close()
    return ids


def count_ids(ids: Sequence[str], expected: Sequence[str]) -> dict[str, int]:
    """Lost and duplicated ids among ``expected``, given the ids read back."""
    seen: dict[str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    lost = sum(1 for i in expected if i not in seen)
    dups = sum(seen[i] - 1 for i in expected if i in seen)
    return {"expected": len(expected), "lost": lost, "duplicates": dups}


# --- running callers --------------------------------------------------------------------------


async def in_window(
    send: Callable[[dict[str, Any]], Awaitable[Any]],
    payloads: Sequence[dict[str, Any]],
    window: int,
) -> None:
    """Await ``send`` for every payload with at most ``window`` calls in flight."""
    it = iter(payloads)

    async def lane() -> None:
        for p in it:
            await send(stamp(p))

    await asyncio.gather(*(lane() for _ in range(window)))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank on sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    vals = sorted(v for v in values if v == v)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def python() -> str:
    return sys.executable


def warm_payload() -> dict[str, Any]:
    """One warm-up payload (sent before the clock starts, to open connections)."""
    return make_payloads(os.urandom(4).hex(), 1, prefix=WARM_PREFIX)[0]


class Consumers:
    """``workers`` consumer processes of one system on its queue, recording into one directory."""

    def __init__(self, system: Any, mode: str, workdir: Path, workers: int = 1) -> None:
        self.records_dir = workdir / f"records-{mode}"
        self.records_dir.mkdir(parents=True, exist_ok=True)
        self.records = Records(self.records_dir)
        env = system.consumer_env(mode, self.records_dir)
        argv = system.consumer_argv(sys.executable)
        self.procs = [
            ConsumerProcess(argv, env, workdir / f"consumer-{mode}-{i}.log") for i in range(workers)
        ]
        self.stopped = False

    def alive(self) -> bool:
        return all(p.alive() for p in self.procs)

    def wait(self, ids: Sequence[str], timeout: float) -> None:
        """Wait until every id succeeded; raise with the consumer's last lines otherwise."""
        if not self.records.wait(ids, timeout, self.alive):
            missing = sum(1 for i in ids if i not in self.records.ok)
            why = "a consumer exited" if not self.alive() else f"timed out after {timeout:.0f}s"
            raise RuntimeError(f"{why}; {missing} of {len(ids)} not processed\n{self.tail()}")

    def peak_rss_kib(self) -> int:
        return sum(p.peak_rss_kib() for p in self.procs)

    def stop(self) -> list[int]:
        if self.stopped:
            return []
        self.stopped = True
        codes = [p.stop() for p in self.procs]
        self.records.poll()
        return codes

    def tail(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.tail()}" for p in self.procs)


def window(records: Records, ids: Sequence[str]) -> tuple[float, float]:
    """First handler start and last handler end among the successes of ``ids``."""
    starts = [records.ok[i][0][0] for i in ids]
    ends = [records.ok[i][0][1] for i in ids]
    return min(starts), max(ends)


def leftovers(url: str, queues: Sequence[str]) -> int:
    """Messages still ready in any of ``queues`` (after the consumers stopped)."""
    return sum(v or 0 for v in depths(url, queues).values())
