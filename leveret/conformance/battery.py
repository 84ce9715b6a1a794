"""The conformance battery: drive any consumer through the contract and check it.

``leveret conformance --queue Q -- COMMAND...`` declares a topology of its own
around ``Q``, starts ``COMMAND`` with ``LEVERET_URL`` and ``LEVERET_QUEUE`` set,
publishes tasks that succeed, fail, break the rules or get their consumer
killed, and reads the receipts and the dead-letter queue to decide, by message
id, whether the consumer followed ``docs/contract.md``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pika
import structlog

from leveret import admin, connection, dlq, tracing, wire
from leveret.conformance import ROUTING_KEY, Conformance, Receipt, topology
from leveret.publisher import Publisher
from leveret.status import events as status
from leveret.status.events import TERMINAL, JobStatus
from leveret.topology import Topology

log = structlog.get_logger(__name__)

FAILURE_HEADERS = (
    wire.ERROR_TYPE,
    wire.ERROR_MESSAGE,
    wire.FIRST_FAILED_AT,
    wire.LAST_FAILED_AT,
    wire.FAILED_QUEUE,
    wire.ORIGINAL_EXCHANGE,
    wire.ORIGINAL_ROUTING_KEY,
)


@dataclass
class Check:
    """One line of the result table."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class Battery:
    """The battery against one consumer command.

    Args:
        url: the broker.
        queue: the queue the consumer is told to consume (declared here, deleted after).
        command: the consumer, as an argument list.
        timeout: seconds each check may wait.
    """

    url: str
    queue: str
    command: Sequence[str]
    timeout: float = 30.0
    checks: list[Check] = field(default_factory=list)
    _receipts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    _receipt_headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    _published: set[str] = field(default_factory=set)
    _process: subprocess.Popen[bytes] | None = None

    @property
    def receipts_exchange(self) -> str:
        return f"{self.queue}.receipts"

    @property
    def status_queue(self) -> str:
        return f"{self.queue}.status"

    def run(self) -> list[Check]:
        """Run every check in order and return the table."""
        top = topology(self.queue)
        with self._declared(top), self._consumer():
            for check in (
                self._valid,
                self._trace,
                self._fails_once,
                self._fails_always,
                self._bad_input,
                self._batch_member,
                self._sigkill,
                self._sigterm,
            ):
                try:
                    check()
                except AssertionError as exc:
                    self.checks.append(Check(check.__name__.strip("_"), False, str(exc)))
            self._accounting()
        return self.checks

    # --- the checks ---------------------------------------------------------------

    def _valid(self) -> None:
        task = self._publish(Conformance(note="valid"))
        self._wait(lambda: task in self._receipts, "a receipt for the valid task")
        time.sleep(0.5)  # a second processing would show up within this
        self._poll()
        ok = self._receipts[task] == [1] and self._depth(self.queue) == 0
        self._record("valid task processed and acked once", ok, f"receipts {self._receipts[task]}")

    def _trace(self) -> None:
        """The receipt, published while its task is handled, continues the task's trace.

        The given trace is not sampled (flags 00), so a consumer that writes the
        flags of a new trace instead of the task's fails. A task without a
        traceparent starts a trace of its own, which its receipt carries.
        """
        given = replace(tracing.root(), flags="00")
        headers = {wire.VERSION: 1, **given.headers(), tracing.TRACESTATE: "leveret=battery"}
        body = self._receipted(Conformance(note="traced")).to_json()
        traced = self._publish_raw(body, headers=headers)
        untraced = self._publish_raw(body)
        self._wait(
            lambda: {traced, untraced} <= self._receipt_headers.keys(),
            "the receipts of a traced and an untraced task",
        )
        traced_headers, untraced_headers = (self._receipt_headers[t] for t in (traced, untraced))
        sent, started = tracing.of(traced_headers), tracing.of(untraced_headers)
        ok = (
            sent is not None
            and (sent.trace_id, sent.flags, sent.state)
            == (given.trace_id, given.flags, "leveret=battery")
            and sent.parent_id != given.parent_id
            and started is not None
            and started.trace_id != given.trace_id
        )
        detail = (
            f"sent {given.traceparent}, receipt {traced_headers.get(tracing.TRACEPARENT)!r}; "
            f"without one, receipt {untraced_headers.get(tracing.TRACEPARENT)!r}"
        )
        self._record("a receipt continues the task's trace, or starts one", ok, detail)

    def _fails_once(self) -> None:
        task = self._publish(Conformance(fail_times=1, note="fails once"))
        self._wait(lambda: task in self._receipts, "a receipt after one retry")
        attempts = self._receipts[task]
        self._record(
            "transient failure retried, processed on attempt 2", attempts == [2], f"{attempts}"
        )

    def _fails_always(self) -> None:
        started = time.monotonic()
        task = self._publish(Conformance(fail_times=99, note="always fails"))
        letter = self._dead_letter(task)
        elapsed = time.monotonic() - started
        policy = topology(self.queue).queues[0].retry
        headers = letter.headers
        missing = [h for h in FAILURE_HEADERS if h not in headers]
        count = headers.get(wire.RETRY_COUNT)
        ok = (
            count == policy.max_attempts
            and isinstance(count, int)
            and not isinstance(count, bool)  # any AMQP integer field, never a boolean
            and headers.get(wire.REASON) == wire.HANDLER_ERROR
            and not missing
            and task not in self._receipts
            and elapsed >= sum(policy.delays) * 0.9  # it did wait in every tier
        )
        detail = f"retry count {count!r}, reason {headers.get(wire.REASON)!r}, missing {missing}"
        self._record("retried through every tier, then dead-lettered", ok, detail)

    def _bad_input(self) -> None:
        cases: list[tuple[str, bytes, dict[str, Any], str]] = [
            ("invalid JSON", b"{not json", {}, "invalid-json"),
            ("unknown type", b"{}", {"type": "leveret.conformance.unknown"}, "unknown-type"),
            ("unknown version", b"{}", {"headers": {wire.VERSION: 99}}, "unknown-version"),
            ("schema violation", b'{"fail_times": "x"}', {}, "schema-violation"),
        ]
        for name, body, props, reason in cases:
            message_id = self._publish_raw(body, **props)
            try:
                letter = self._dead_letter(message_id)
            except AssertionError as exc:
                self._record(f"{name}: dead-lettered at once", False, str(exc))
                continue
            got = letter.headers.get(wire.REASON)
            count = letter.headers.get(wire.RETRY_COUNT)
            ok = got == reason and count == 1
            self._record(f"{name}: dead-lettered at once", ok, f"reason {got!r}, count {count!r}")

    def _batch_member(self) -> None:
        batch, task = f"{self.queue}.batch", wire.new_message_id()
        with admin.channel(self.url) as ch:
            ch.queue_bind(self.status_queue, status.EXCHANGE, routing_key=task)
        body = self._receipted(Conformance(note="batch member")).to_json()
        self._publish_raw(body, message_id=task, headers={wire.VERSION: 1, wire.BATCH: batch})
        ended: list[JobStatus] = []

        def reported() -> bool:
            ended.extend(
                e for e in self._status_events() if e.job_id == task and e.state in TERMINAL
            )
            return bool(ended)

        self._wait(
            lambda: reported() and task in self._receipts,
            "the batch member's receipt and final status event",
        )
        event = ended[0]
        ok = (event.state, event.batch_id) == ("succeeded", batch) and task in self._receipts
        detail = f"state {event.state!r}, batch_id {event.batch_id!r}"
        self._record("batch member reports its end", ok, detail)

    def _sigkill(self) -> None:
        task = self._publish(Conformance(sleep_ms=3000, note="killed mid-handler"))
        self._wait(lambda: self._depth(self.queue) == 0, "the consumer to take the task")
        time.sleep(0.5)
        assert self._process is not None
        self._process.kill()
        self._process.wait(10)
        self._start()
        self._wait(lambda: task in self._receipts, "the task to be redelivered and processed")
        self._record(
            "redelivered after SIGKILL mid-handler", True, f"receipts {self._receipts[task]}"
        )

    def _sigterm(self) -> None:
        task = self._publish(Conformance(sleep_ms=1500, note="SIGTERM mid-handler"))
        self._wait(lambda: self._depth(self.queue) == 0, "the consumer to take the task")
        time.sleep(0.3)
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        try:
            code = self._process.wait(self.timeout)
        except subprocess.TimeoutExpired:
            code = None
        self._wait(lambda: task in self._receipts, "the receipt of the task in flight")
        self._record("SIGTERM mid-handler: finished, acked, exit 0", code == 0, f"exit code {code}")

    def _accounting(self) -> None:
        self._poll()
        dead = {d.message_id for d in dlq.browse(self.url, self.queue, limit=10_000)}
        lost = self._published - set(self._receipts) - dead
        extra = sum(len(a) - 1 for a in self._receipts.values() if len(a) > 1)
        detail = f"{len(self._published)} published, {len(lost)} lost, {extra} duplicated"
        self._record("every task accounted for by id", not lost, detail)

    # --- plumbing ---------------------------------------------------------------

    def _record(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append(Check(name, passed, detail))
        log.info("conformance.check", check=name, passed=passed, detail=detail)

    @contextmanager
    def _declared(self, top: Topology) -> Iterator[None]:
        admin.apply(self.url, top)
        with admin.channel(self.url) as ch:
            ch.exchange_declare(self.receipts_exchange, "fanout", durable=True)
            ch.queue_declare(self.receipts_exchange, durable=True)
            ch.queue_bind(self.receipts_exchange, self.receipts_exchange)
            # Shared by every pipeline on the vhost: declared if absent, never deleted.
            ch.exchange_declare(status.EXCHANGE, "topic", durable=True)
            ch.queue_declare(self.status_queue, durable=True)
        try:
            yield
        finally:
            admin.delete(self.url, top)
            with admin.channel(self.url) as ch:
                ch.queue_delete(self.receipts_exchange)
                ch.exchange_delete(self.receipts_exchange)
                ch.queue_delete(self.status_queue)

    @contextmanager
    def _consumer(self) -> Iterator[None]:
        self._start()
        try:
            yield
        finally:
            if self._process is not None and self._process.poll() is None:
                self._process.send_signal(signal.SIGTERM)
                try:
                    self._process.wait(self.timeout)
                except subprocess.TimeoutExpired:
                    self._process.kill()

    def _start(self) -> None:
        env = dict(os.environ, LEVERET_URL=self.url, LEVERET_QUEUE=self.queue)
        self._process = subprocess.Popen(list(self.command), env=env)
        self._wait(self._has_consumer, "the consumer to register on the queue")

    def _has_consumer(self) -> bool:
        with admin.channel(self.url) as ch:
            return int(ch.queue_declare(self.queue, passive=True).method.consumer_count) > 0

    def _depth(self, queue: str) -> int:
        with admin.channel(self.url) as ch:
            return int(ch.queue_declare(queue, passive=True).method.message_count)

    def _receipted(self, task: Conformance) -> Conformance:
        """The task, asking for a receipt to the battery's receipts exchange."""
        return task.model_copy(
            update={"receipt_exchange": self.receipts_exchange, "receipt_routing_key": ""}
        )

    def _publish(self, task: Conformance) -> str:
        task = self._receipted(task)
        with Publisher(self.url) as pub:
            message_id = pub.publish(task, exchange=f"{self.queue}.ex", routing_key=ROUTING_KEY)
        self._published.add(message_id)
        return message_id

    def _publish_raw(self, body: bytes, **props: Any) -> str:
        message_id = props.get("message_id") or wire.new_message_id()
        properties = pika.BasicProperties(
            content_type=wire.CONTENT_TYPE,
            delivery_mode=2,
            message_id=message_id,
            type=props.get("type", Conformance.message_type),
            headers=props.get("headers", {wire.VERSION: 1}),
        )
        with admin.channel(self.url) as ch:
            ch.confirm_delivery()
            ch.basic_publish(f"{self.queue}.ex", ROUTING_KEY, body, properties, mandatory=True)
        self._published.add(message_id)
        return message_id

    def _poll(self) -> None:
        """Take every receipt waiting in the receipts queue."""
        with admin.channel(self.url) as ch:
            while True:
                method, props, body = ch.basic_get(self.receipts_exchange, auto_ack=True)
                if method is None:
                    return
                receipt = Receipt.from_json(body)
                assert isinstance(receipt, Receipt)
                self._receipts[receipt.message_id].append(receipt.attempt)
                self._receipt_headers[receipt.message_id] = dict(props.headers or {})

    def _status_events(self) -> list[JobStatus]:
        """Take every status event waiting in the battery's status queue."""
        events: list[JobStatus] = []
        with admin.channel(self.url) as ch:
            while True:
                method, _props, body = ch.basic_get(self.status_queue, auto_ack=True)
                if method is None:
                    return events
                event = JobStatus.from_json(body)
                assert isinstance(event, JobStatus)
                events.append(event)

    def _dead_letter(self, message_id: str) -> dlq.DeadLetter:
        found: list[dlq.DeadLetter] = []

        def arrived() -> bool:
            found[:] = [
                d
                for d in dlq.browse(self.url, self.queue, limit=10_000)
                if d.message_id == message_id
            ]
            return bool(found)

        self._wait(arrived, f"message {message_id} in the dead-letter queue")
        return found[0]

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            self._poll()
            if predicate():
                return
            if self._process is not None and self._process.poll() not in (None, 0):
                raise AssertionError(
                    f"the consumer exited with {self._process.returncode} ({what})"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.1)


def run(url: str, queue: str, command: Sequence[str], timeout: float = 30.0) -> list[Check]:
    """Run the battery; see :class:`Battery`."""
    return Battery(connection.split_urls(url)[0], queue, command, timeout).run()
