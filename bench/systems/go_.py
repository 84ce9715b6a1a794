"""The Go amqp091 client (github.com/rabbitmq/amqp091-go): a baseline for what the broker can
do with a compiled client and the same guarantees: quorum queue, persistent messages, publisher
confirms, manual ack after ``json.Unmarshal`` of the body, no log line.

The program is ``bench/go`` (built offline by ``bench/go/build.sh`` from Debian's
golang-go and golang-github-rabbitmq-amqp091-go-dev; no module download). It publishes by itself
(one connection, a channel per goroutine, ``PublishWithDeferredConfirm``) and consumes
(``bench-go consume``, one goroutine, prefetch 8 like the raw Python consumers). Without a
``go`` toolchain every measurement of this system is "n/a". The latency run paces its messages
from Python with pika (as for raw pika); there is no retry run (n/a).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from bench import common
from bench.systems import Caller
from bench.systems import System as Base
from bench.systems.pika_ import PREFETCH, WINDOW, _BlockingCaller, _SelectBatcher
from bench.systems.pika_ import System as Pika

GO_DIR = common.ROOT / "bench" / "go"
BINARY = GO_DIR / "bin" / "bench-go"


def build() -> str | None:
    """Build the program if a source is newer than the binary; why it cannot, or None."""
    if shutil.which("go") is None:
        return (
            "`go` is not installed "
            "(apt-get install golang-go golang-github-rabbitmq-amqp091-go-dev)"
        )
    sources = [GO_DIR / "main.go", GO_DIR / "go.mod", GO_DIR / "build.sh"]
    if BINARY.exists() and all(s.stat().st_mtime <= BINARY.stat().st_mtime for s in sources):
        return None
    proc = subprocess.run([str(GO_DIR / "build.sh")], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return f"bench/go/build.sh failed: {(proc.stderr or proc.stdout).strip()[-300:]}"
    return None


class System(Base):
    name = "go"
    batch_api = f"amqp091-go, one channel, {WINDOW} deferred confirms in flight"

    def __init__(self, url: str, tag: str, params: dict[str, Any]) -> None:
        super().__init__(url, tag, params)
        self.unavailable = build()
        self.queue_type = params.get("queue_type") or "quorum"
        prefetch = params.get("prefetch") or PREFETCH
        self.consumer_desc = (
            f"`bench-go consume`, one goroutine, prefetch {prefetch}, {self.queue_type} queue, "
            "json.Unmarshal"
        )
        self._pika = Pika(url, tag, params)
        self._pika.queue = self.queue

    def declare(self) -> None:
        self._pika.declare_named(self.queue)

    def queues(self) -> list[str]:
        return [self.queue, f"{self.queue}.delay"]

    def publish_external(self, n: int, callers: int, window: int) -> float | None:
        pad = len(common.make_payloads(self.tag, 1, 200)[0]["pad"])
        env = {
            **os.environ,
            "BENCH_URL": self.url,
            "BENCH_QUEUE": self.queue,
            "BENCH_TAG": self.tag,
            "BENCH_N": str(n),
            "BENCH_CALLERS": str(callers),
            "BENCH_WINDOW": str(window),
            "BENCH_PAD": str(pad),
        }
        # A few seconds' work: a publisher stuck on a lost connection is cut short
        # and the measurement run again, rather than holding the run for long.
        proc = subprocess.run(
            [str(BINARY), "publish"], env=env, capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench-go publish failed: {proc.stderr.strip()[-500:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if out["nacked"] or out["returned"]:
            raise RuntimeError(f"{out['nacked']} nacked, {out['returned']} returned")
        return float(out["seconds"])

    def caller(self) -> Caller:
        return _BlockingCaller(self.url, self.queue)

    def batcher(self, warm: bool = True) -> Any:
        return _SelectBatcher(self.url, self.queue, warm)

    def extract_id(self, body: bytes) -> str:
        return str(json.loads(body)["id"])

    def consumer_argv(self, python: str) -> list[str]:
        return [str(BINARY), "consume"]
