"""A node of a three-node cluster stops mid-run: nothing is lost.

The module starts its own cluster with ``scripts/cluster.sh`` (nodes
leveret1..3@localhost on ports 5681..5683, next to the main broker, which it
never touches) and stops it at the end. One worker and one publisher use all
three URLs; node 1, where both are connected and where every quorum queue has
its leader, is stopped while messages flow. Every confirmed message id must
then be processed at least once; duplicates are allowed and counted.

RabbitMQ before 3.12.5 can hold a retry in its tier queue for as long as node 1
is down (the tier's at-least-once dead-letter worker keeps asking the stopped
node; see docs/cluster.md). The test accepts that only for retries that the
broker provably still holds, then starts node 1 again and requires them too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika.exceptions
import pytest
from structlog.testing import capture_logs

from leveret import App, Outcome, Publisher, Worker, admin, connection
from leveret.errors import BrokerUnavailable, NotConfirmed
from leveret.topology import dead_letter_queue
from tests import apps

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cluster.sh"
NODES = ("leveret1@localhost", "leveret2@localhost", "leveret3@localhost")
# No credentials: RabbitMQ's default user, which the cluster script leaves in place.
URLS = [f"amqp://127.0.0.1:{port}/" for port in (5681, 5682, 5683)]
CLUSTER_URL = ",".join(URLS)

MESSAGES = 2000
FAIL_EVERY = 50  # every 50th message fails once, so retries cross the node stop
STOP_AFTER = 600  # confirmed publishes before node 1 is stopped
PUBLISH_DEADLINE = 60.0  # seconds one message may take to be confirmed, retries included
QUIET = 8.0  # seconds without progress after which the rest counts as held
# A held retry is sent again this often (RabbitMQ's default is 180 s).
DLX_CONFIRM_TIMEOUT_MS = 3000

# The budget of each test's own body (about 64 s on a quiet machine; a loaded one
# can take twice that). The cluster's start and stop are left out of it
# (func_only): each is bounded by cluster_sh's own timeout, and a timeout firing
# in the module fixture's teardown would end the whole session, not one test.
pytestmark = pytest.mark.timeout(300, func_only=True)


def cluster_sh(*args: str, timeout: float = 150) -> str:
    """Run scripts/cluster.sh and echo its lines; fail with its output if it fails."""
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        env={
            **os.environ,
            "LEVERET_CLUSTER_DLX_CONFIRM_TIMEOUT_MS": str(DLX_CONFIRM_TIMEOUT_MS),
        },
    )
    print(proc.stdout, end="")
    if proc.returncode != 0:
        raise AssertionError(
            f"scripts/cluster.sh {' '.join(args)} exited with {proc.returncode} "
            f"after {time.monotonic() - started:.0f}s:\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def cli(tool: str, node: str, *args: str) -> str:
    """A RabbitMQ CLI tool against one cluster node, bounded in time."""
    proc = subprocess.run(
        [tool, "-n", node, "-q", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, f"{tool} -n {node} {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def quorum_members(queue: str, node: str = NODES[0]) -> dict[str, str]:
    """Each member node of a quorum queue with its Raft state."""
    out = cli("rabbitmq-queues", node, "quorum_status", queue, "--formatter", "json")
    return {str(r["Node Name"]): str(r["Raft State"]) for r in json.loads(out)}


def queue_table(queue: str, node: str) -> dict[str, tuple[int, int, int, int, str]]:
    """Our queues as ``name: (messages, ready, unacked, consumers, leader)``.

    For a quorum queue, ``messages - ready - unacked`` counts the messages it
    holds for at-least-once dead-lettering: expired, not yet confirmed by the target.
    """
    out = cli(
        "rabbitmqctl",
        node,
        "list_queues",
        "--no-table-headers",
        "name",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "leader",
    )
    rows = {}
    for line in out.splitlines():
        name, *numbers, leader = line.split("\t")
        if name == queue or name.startswith(f"{queue}."):
            total, ready, unacked, consumers = (int(x) for x in numbers)
            rows[name] = (total, ready, unacked, consumers, leader)
    return rows


def consumers_on(queue: str, url: str) -> int:
    """Consumer count of a queue, asked of one node with a passive declare."""
    conn = connection.connect(url, name="leveret-test-cluster")
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)
    finally:
        conn.close()


def consumer_nodes(queue: str, node: str) -> set[str]:
    """Nodes whose channels hold a consumer on ``queue`` (from ``list_consumers``)."""
    out = cli(
        "rabbitmqctl", node, "list_consumers", "--no-table-headers", "queue_name", "channel_pid"
    )
    # A line reads "<queue>\t<leveret2@localhost.1700000000.1234.0>".
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    return {pid.strip("<>").rsplit(".", 3)[0] for name, pid in rows if name == queue}


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (in a thread: it may block) until it holds, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await asyncio.to_thread(predicate):
                return
        except (AssertionError, BrokerUnavailable, pika.exceptions.AMQPError):
            pass  # a node in transition; ask again
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """Three clustered nodes for this module; stopped and removed afterwards."""
    started = time.monotonic()
    try:
        cluster_sh("start")
        print(f"cluster: started in {time.monotonic() - started:.1f}s")
        yield CLUSTER_URL
    finally:
        cluster_sh("stop")


@dataclass
class Feed:
    """The publishing side: what the broker confirmed and what had to be sent again."""

    exchange: str
    confirmed: list[str] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    resent: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            with Publisher(CLUSTER_URL) as pub:
                for n in range(MESSAGES):
                    fail_times = 1 if n % FAIL_EVERY == 0 else 0
                    self.publish(pub, apps.Task(n=n, fail_times=fail_times))
        except BaseException as exc:
            self.error = exc
            raise

    def publish(self, pub: Publisher, message: apps.Task) -> None:
        # A publish that raised is not confirmed: send it again with the same
        # id (the broker may have taken the first one, so a duplicate is fine).
        message_id = str(uuid.uuid4())
        deadline = time.monotonic() + PUBLISH_DEADLINE
        while True:
            try:
                pub.publish(message, exchange=self.exchange, message_id=message_id)
                break
            except (BrokerUnavailable, NotConfirmed) as exc:
                self.resent.append(f"{message.n}: {type(exc).__name__}: {exc}")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.confirmed.append(message_id)
        if message.fail_times:
            self.failing.add(message_id)


class Ledger:
    """What the worker reported, by message id."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def processed(self) -> Counter[str]:
        return Counter(o.message_id or "" for o in self.outcomes if o.outcome == "processed")

    def ids(self, outcome: str) -> set[str]:
        return {o.message_id or "" for o in self.outcomes if o.outcome == outcome}

    async def settle(self, wanted: set[str], timeout: float, quiet: float) -> set[str]:
        """Wait until ``wanted`` are all processed, or nothing new comes for ``quiet``
        seconds, or ``timeout``. Returns the ids still missing."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while True:
            missing = wanted - self.processed().keys()
            now = time.monotonic()
            if not missing or now > deadline or now - last_change > quiet:
                return missing
            if len(self.outcomes) != last:
                last, last_change = len(self.outcomes), now
            await asyncio.sleep(0.1)


async def test_stopping_a_node_loses_nothing(cluster: str) -> None:
    tag = uuid.uuid4().hex[:10]
    queue, exchange = f"t.{tag}.work", f"t.{tag}.ex"
    app = apps.build_app(queue, exchange)
    admin.apply(cluster, app.topology)
    try:
        await run_and_account(app, queue, exchange)
    finally:
        admin.delete(cluster, app.topology)


async def run_and_account(app: App, queue: str, exchange: str) -> None:
    # Quorum queues are replicated on every node: the work queue, its tiers
    # and its dead-letter queue.
    names = [queue, *(name for name, _ in app.topology.queue(queue).tier_queues())]
    for name in [*names, dead_letter_queue(queue)]:
        members = quorum_members(name)
        assert sorted(members) == sorted(NODES), f"{name}: members {members}"
    leader = next(n for n, state in quorum_members(queue).items() if state == "leader")
    print(f"\ncluster: {queue} and its tiers and dead-letter queue have 3 members")

    ledger = Ledger()
    feed = Feed(exchange)
    worker = Worker(app, CLUSTER_URL, on_outcome=ledger.outcomes.append, concurrency=8)
    began = time.monotonic()
    with capture_logs() as logs:
        running = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: consumers_on(queue, URLS[0]) >= 1, 30, "the worker")
            assert consumer_nodes(queue, NODES[0]) == {NODES[0]}, "the worker is not on node 1"

            # Publish; stop node 1 (the worker's, the publisher's and every
            # queue leader's node) once STOP_AFTER messages are confirmed.
            publishing = asyncio.create_task(asyncio.to_thread(feed.run))
            await eventually(
                lambda: len(feed.confirmed) >= STOP_AFTER or feed.error is not None,
                60,
                f"{STOP_AFTER} confirmed publishes",
            )
            stop_began = time.monotonic()
            confirmed_before = len(feed.confirmed)
            processed_before = len(ledger.processed())
            await asyncio.to_thread(cluster_sh, "stop-node", "1")
            stop_took = time.monotonic() - stop_began

            # The worker consumes again from node 2 or 3, and the broker says so.
            def consuming_elsewhere() -> bool:
                nodes = consumer_nodes(queue, NODES[1])
                return bool(nodes) and NODES[0] not in nodes and consumers_on(queue, URLS[1]) >= 1

            await eventually(consuming_elsewhere, 60, "the worker's consumer on node 2 or 3")
            back_after = time.monotonic() - stop_began
            nodes_after = consumer_nodes(queue, NODES[1])
            new_leader = next(
                n for n, s in quorum_members(queue, NODES[1]).items() if s == "leader"
            )

            await asyncio.wait_for(publishing, 120)
            confirmed = set(feed.confirmed)
            assert len(confirmed) == MESSAGES

            # Phase 1, node 1 down: everything is processed, except retries the
            # broker holds in a tier (RabbitMQ < 3.12.5; see the module docstring).
            held_ids = await ledger.settle(confirmed, 60, QUIET)
            outage_processed = len(ledger.processed())
            table = await asyncio.to_thread(queue_table, queue, NODES[1])
            # What `leveret queues` shows meanwhile (passive declares).
            shown = await asyncio.to_thread(admin.stats, URLS[1:], app.topology)
            held_by_broker = sum(
                total - ready - unacked
                for name, (total, ready, unacked, _c, _l) in table.items()
                if name != queue
            )

            # Phase 2: node 1 comes back; held retries must arrive now.
            restart_began = time.monotonic()
            await asyncio.to_thread(cluster_sh, "start-node", "1")
            missing = await ledger.settle(confirmed, 45, 45)
            healed_after = time.monotonic() - restart_began
            await asyncio.sleep(1)  # let late redeliveries show up as duplicates
            members_after = await asyncio.to_thread(quorum_members, queue, NODES[1])
        finally:
            worker.stop()
            await asyncio.wait_for(running, 40)
    elapsed = time.monotonic() - began

    processed = ledger.processed()
    unknown = processed.keys() - confirmed
    duplicates = sum(count - 1 for count in processed.values())
    # The messages that fail once succeed on a later attempt, never on the first.
    late = {o.message_id for o in ledger.outcomes if o.outcome == "processed" and o.attempt > 1}
    early = {o.message_id for o in ledger.outcomes if o.outcome == "processed" and o.attempt == 1}
    noteworthy = Counter(
        str(e["event"]) for e in logs if e.get("log_level") in ("warning", "error")
    )
    final = await asyncio.to_thread(queue_table, queue, NODES[1])
    dlq = final[dead_letter_queue(queue)][0]

    print(
        "\ncluster figures:\n"
        f"  published (confirmed ids)   {len(confirmed)}, {len(feed.failing)} of them fail once;"
        f" {len(feed.resent)} publishes sent again\n"
        f"  node 1 stopped after        {confirmed_before} confirmed, {processed_before}"
        f" processed; the stop took {stop_took:.1f}s\n"
        f"  worker consuming again on   {', '.join(sorted(nodes_after))},"
        f" {back_after:.1f}s after the stop began\n"
        f"  quorum leader               {leader} -> {new_leader}\n"
        f"  processed, node 1 down      {outage_processed}; held in a retry tier:"
        f" {len(held_ids)} ids, {held_by_broker} messages by the broker's count\n"
        f"  processed, node 1 back      {len(processed)} distinct ids"
        f" ({len(late)} after a retry), {healed_after:.1f}s after start-node began\n"
        f"  missing                     {len(missing)}\n"
        f"  duplicates                  {duplicates}"
        f" ({sum(c > 1 for c in processed.values())} ids processed more than once)\n"
        f"  outcomes                    {dict(Counter(o.outcome for o in ledger.outcomes))}\n"
        f"  dead-letter queue           {dlq}\n"
        f"  warnings and errors logged  {dict(noteworthy)}\n"
        f"  time (worker start to end)  {elapsed:.1f}s"
    )
    for line in feed.resent[:5]:
        print(f"  sent again: {line}")
    if held_ids or missing:
        by_id = {mid: n for n, mid in enumerate(feed.confirmed)}
        print(f"  held (n): {sorted(by_id[m] for m in held_ids)}")
        print(f"  missing (n): {sorted(by_id[m] for m in missing)}")
        print("  queues while node 1 was down (messages, ready, unacked, consumers, leader):")
        for name, row in sorted(table.items()):
            print(f"    {name}: {row}")
        print("  `leveret queues` meanwhile (name, messages, consumers):")
        for st in shown:
            print(f"    {st.name}: {st.messages}, {st.consumers}")

    assert not missing, f"{len(missing)} confirmed messages never processed"
    assert not unknown, f"processed ids that were never published: {sorted(unknown)[:5]}"
    # Held only: retries whose copy the broker confirmed, and still counts.
    assert held_ids <= feed.failing & ledger.ids("retry_scheduled"), "a first delivery was held"
    assert held_by_broker >= len(held_ids), "the broker does not hold the missing retries"
    assert late == feed.failing, "the messages that fail once must succeed on a retry"
    assert not early & feed.failing, "a message meant to fail succeeded on its 1st attempt"
    assert dlq == 0
    assert sorted(members_after) == sorted(NODES)


def test_the_script_refuses_a_bad_node_number() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "stop-node", "7"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode != 0
    assert "1, 2 or 3" in proc.stderr
