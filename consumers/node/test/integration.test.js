// Integration tests against a real RabbitMQ (3.10+) on 127.0.0.1:5672, or
// LEVERET_TEST_URL. Each suite declares a topology of its own under a unique
// name, mirroring leveret/topology.py (quorum queues; tiers of 200 and 400 ms;
// 3 attempts), runs src/main.js as a child process, and deletes everything
// afterwards. Without a broker the suites are skipped; set
// LEVERET_REQUIRE_BROKER=1 to make that a failure.

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import amqp from "amqplib";
import { DEFAULT_SCHEMAS } from "../src/config.js";
import { conformance, exportReport } from "../src/handlers.js";
import { Schemas } from "../src/schemas.js";
import { STATUS_EXCHANGE } from "../src/status.js";
import { parseTraceparent } from "../src/trace.js";
import { DeadLetter } from "../src/wire.js";
import { Worker } from "../src/worker.js";
import { peekHeaders } from "./helpers/amqp-peek.js";
import { BROKER_URL } from "./helpers/broker.js";

const URL_ = BROKER_URL;
const MAIN = fileURLToPath(new URL("../src/main.js", import.meta.url));
const ROUTING_KEY = "conformance";
const TIERS = [200, 400]; // ms; max_attempts 3
const int = (value) => ({ "!": "int", value }); // as pika sends integers
const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID = "00f067aa0ba902b7";
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_ID}-01`;

async function brokerUp() {
  try {
    const conn = await amqp.connect(URL_);
    await conn.close();
    return true;
  } catch (err) {
    if (process.env.LEVERET_REQUIRE_BROKER === "1") throw err;
    return false;
  }
}
const available = await brokerUp();
const skip = available ? false : `no RabbitMQ at ${URL_.replace(/:[^:@/]*@/, ":***@")}`;

async function waitFor(predicate, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** The broker side of one test queue: topology, publishing, receipts, dead letters. */
class Harness {
  constructor(label, { unboundDead = false, classic = false } = {}) {
    this.q = `leveret.node-test.${label}.${process.pid}.${randomUUID().slice(0, 8)}`;
    this.unboundDead = unboundDead;
    this.classic = classic; // classic queues: a policy can make one nack every publish
    this.receipts = new Map(); // task message id -> [{attempt, consumer, msg}]
    this.dead = new Map(); // message id -> amqplib message
  }

  get names() {
    const q = this.q;
    return {
      exchanges: [`${q}.ex`, `${q}.dead`, `${q}.retry`, `${q}.receipts`, `${q}.rejected`],
      queues: [q, `${q}.dlq`, ...TIERS.map((_, i) => `${q}.retry.${i + 1}`), `${q}.receipts`, `${q}.rejected`],
    };
  }

  async setUp() {
    this.conn = await amqp.connect(URL_);
    this.ch = await this.conn.createConfirmChannel();
    const { ch, q } = this;
    const quorum = this.classic ? {} : { "x-queue-type": "quorum" };
    const atLeastOnce = this.classic ? {} : { "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish" };
    const limit = this.classic ? {} : { "x-delivery-limit": int(20) };
    await ch.assertExchange(`${q}.ex`, "direct", { durable: true });
    // Q.dead (fanout) -> Q.dlq
    await ch.assertExchange(`${q}.dead`, "fanout", { durable: true });
    await ch.assertQueue(`${q}.dlq`, { durable: true, arguments: quorum });
    // With unboundDead, Q.dlq is left unbound, so copies to Q.dead are returned;
    // Q then dead-letters to Q.rejected instead, where rejected deliveries show up.
    if (!this.unboundDead) await ch.bindQueue(`${q}.dlq`, `${q}.dead`, "");
    await ch.assertExchange(`${q}.rejected`, "fanout", { durable: true });
    await ch.assertQueue(`${q}.rejected`, { durable: true, arguments: quorum });
    await ch.bindQueue(`${q}.rejected`, `${q}.rejected`, "");
    // Q.retry: headers exchange, alternate exchange Q.dead
    await ch.assertExchange(`${q}.retry`, "headers", { durable: true, alternateExchange: `${q}.dead` });
    // Q
    await ch.assertQueue(q, {
      durable: true,
      arguments: {
        ...quorum,
        "x-dead-letter-exchange": this.unboundDead ? `${q}.rejected` : `${q}.dead`,
        ...atLeastOnce,
        ...limit,
      },
    });
    await ch.bindQueue(q, `${q}.ex`, ROUTING_KEY);
    // tiers: TTL, dead-letter back to Q through the default exchange
    for (const [i, ttl] of TIERS.entries()) {
      const tier = `${q}.retry.${i + 1}`;
      await ch.assertQueue(tier, {
        durable: true,
        arguments: {
          ...quorum,
          "x-dead-letter-exchange": "",
          "x-dead-letter-routing-key": q,
          ...atLeastOnce,
          "x-message-ttl": int(ttl),
        },
      });
      // count k (1 .. max_attempts - 1) -> tier min(k, N)
      await ch.bindQueue(tier, `${q}.retry`, "", { "x-match": "all", "leveret-retry-count": int(i + 1) });
    }
    // where the conformance handler sends its receipts
    await ch.assertExchange(`${q}.receipts`, "fanout", { durable: true });
    await ch.assertQueue(`${q}.receipts`, { durable: true });
    await ch.bindQueue(`${q}.receipts`, `${q}.receipts`, "");
  }

  async tearDown() {
    this.worker?.kill("SIGKILL");
    const ch = await this.conn.createChannel();
    ch.on("error", () => {});
    for (const name of this.names.queues) await ch.deleteQueue(name);
    for (const name of this.names.exchanges) await ch.deleteExchange(name);
    await this.conn.close();
  }

  /** Start src/main.js on this queue and wait until it consumes. */
  async start(env = {}) {
    const child = spawn(process.execPath, [MAIN], {
      env: { ...process.env, LEVERET_URL: URL_, LEVERET_QUEUE: this.q, LEVERET_GRACE: "10", ...env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    child.lines = [];
    let partial = "";
    child.stderr.on("data", (chunk) => {
      const text = partial + chunk;
      const lines = text.split("\n");
      partial = lines.pop();
      child.lines.push(...lines);
    });
    child.exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
    child.events = (name) =>
      child.lines.flatMap((l) => {
        try {
          const line = JSON.parse(l);
          return line.event === name ? [line] : [];
        } catch {
          return [];
        }
      });
    this.worker = child;
    await waitFor(async () => (await this.ch.checkQueue(this.q)).consumerCount > 0, "the worker to consume");
    return child;
  }

  /** Publish a task as a conformant publisher does; returns its message id. */
  async publish({ payload, body, type = "leveret.conformance", headers = { "leveret-version": int(1) }, contentType = "application/json", messageId = randomUUID() } = {}) {
    const content = body ?? Buffer.from(JSON.stringify({ receipt_exchange: `${this.q}.receipts`, receipt_routing_key: "", ...payload }));
    this.ch.publish(`${this.q}.ex`, ROUTING_KEY, Buffer.from(content), {
      contentType,
      persistent: true,
      messageId,
      type,
      timestamp: Math.floor(Date.now() / 1000),
      headers,
      mandatory: true,
    });
    await this.ch.waitForConfirms();
    return messageId;
  }

  async #drain(queue, into) {
    for (;;) {
      const msg = await this.ch.get(queue, { noAck: true });
      if (!msg) return;
      into(msg);
    }
  }

  async receipt(taskId) {
    return waitFor(async () => {
      await this.#drain(`${this.q}.receipts`, (msg) => {
        const body = JSON.parse(msg.content.toString());
        const list = this.receipts.get(body.message_id) ?? [];
        list.push({ ...body, msg });
        this.receipts.set(body.message_id, list);
      });
      return this.receipts.get(taskId);
    }, `a receipt for ${taskId}`);
  }

  async deadLetter(messageId, queue = `${this.q}.dlq`) {
    return waitFor(async () => {
      await this.#drain(queue, (msg) => this.dead.set(msg.properties.messageId, msg));
      return this.dead.get(messageId);
    }, `${messageId} in ${queue}`);
  }
}

describe("the worker against RabbitMQ", { skip, timeout: 120_000 }, () => {
  const h = new Harness("main");
  before(() => h.setUp());
  after(() => h.tearDown());

  it("refuses to start on a queue that does not exist: one line, exit 1", async () => {
    const child = spawn(process.execPath, [MAIN], {
      env: { ...process.env, LEVERET_URL: URL_, LEVERET_QUEUE: `${h.q}.missing` },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (chunk) => (err += chunk));
    const code = await new Promise((resolve) => child.on("exit", resolve));
    assert.equal(code, 1);
    const lines = err.trim().split("\n");
    assert.equal(lines.length, 1, err);
    assert.match(lines[0], /missing on the broker: queue '.*\.missing'.*run `leveret topology apply`/);
  });

  it("processes a valid task once and publishes a conformant receipt", async () => {
    const worker = await h.start();
    const id = await h.publish({ payload: { note: "valid" } });
    const [receipt, ...more] = await h.receipt(id);
    assert.equal(more.length, 0);
    assert.deepEqual({ ...receipt, msg: undefined }, { message_id: id, attempt: 1, consumer: "node", msg: undefined });
    const props = receipt.msg.properties;
    assert.equal(props.contentType, "application/json");
    assert.equal(props.deliveryMode, 2);
    assert.equal(props.type, "leveret.conformance.receipt");
    assert.match(props.messageId, /^[0-9a-f-]{36}$/);
    assert.notEqual(props.messageId, id);
    assert.equal(typeof props.timestamp, "number");
    assert.equal(props.headers["leveret-version"], 1);
    const line = await waitFor(() => worker.events("message.processed").find((l) => l.message_id === id), "the log line");
    // The task came without a traceparent: the receipt starts the trace the log line names.
    assert.equal(parseTraceparent(props.headers.traceparent)?.traceId, line.trace_id);
    assert.equal(parseTraceparent(props.headers.traceparent).flags, "01");
    assert.deepEqual(
      { ...line, time: undefined, duration_ms: undefined },
      {
        time: undefined,
        level: "info",
        event: "message.processed",
        message_id: id,
        trace_id: line.trace_id,
        type: "leveret.conformance",
        version: 1,
        queue: h.q,
        attempt: 1,
        outcome: "processed",
        duration_ms: undefined,
        error: null,
      },
    );
  });

  it("a receipt continues the task's trace: same trace-id and flags, new parent-id, tracestate kept", async () => {
    const headers = { "leveret-version": int(1), traceparent: `00-${TRACE_ID}-${PARENT_ID}-00`, tracestate: "congo=t61rcWkgMzE" };
    const id = await h.publish({ payload: { note: "traced" }, headers });
    const [receipt] = await h.receipt(id);
    const sent = parseTraceparent(receipt.msg.properties.headers.traceparent);
    assert.deepEqual({ ...sent, parentId: undefined }, { traceId: TRACE_ID, parentId: undefined, flags: "00" });
    assert.notEqual(sent.parentId, PARENT_ID);
    assert.equal(receipt.msg.properties.headers.tracestate, "congo=t61rcWkgMzE");
    const line = await waitFor(() => h.worker.events("message.processed").find((l) => l.message_id === id), "the log line");
    assert.equal(line.trace_id, TRACE_ID);
  });

  it("handles demo.export v1 and v2: logs the export, acks", async () => {
    const v1 = await h.publish({ type: "demo.export", body: '{"user_id": 5}' });
    const v2 = await h.publish({ type: "demo.export", body: '{"user_id": 6, "columns": ["a"]}', headers: { "leveret-version": int(2) } });
    const written = await waitFor(() => {
      const lines = h.worker.events("export.written");
      return lines.length === 2 && lines;
    }, "two exports");
    assert.deepEqual(
      written
        .map(({ message_id, version, user_id, format, columns }) => ({ message_id, version, user_id, format, columns }))
        .sort((a, b) => a.user_id - b.user_id),
      [
        { message_id: v1, version: 1, user_id: 5, format: "csv", columns: null },
        { message_id: v2, version: 2, user_id: 6, format: "csv", columns: ["a"] },
      ],
    );
    await waitFor(() => h.worker.events("message.processed").filter((l) => l.type === "demo.export").length === 2, "acks");
  });

  it("retries a task that fails once: processed on attempt 2", async () => {
    const id = await h.publish({ payload: { fail_times: 1 } });
    const receipts = await h.receipt(id);
    assert.deepEqual(receipts.map((r) => r.attempt), [2]);
  });

  it("retries a task that always fails through every tier, then dead-letters it", async () => {
    const started = Date.now();
    const id = await h.publish({ payload: { fail_times: 99 }, headers: { "leveret-version": int(1), traceparent: TRACEPARENT } });
    // Read the wire types first (the peek leaves the message in place).
    const wire = await waitFor(() => peekHeaders(URL_, `${h.q}.dlq`, id), "the dead letter on the wire");
    assert.ok(Date.now() - started >= 0.9 * (TIERS[0] + TIERS[1]), "it waited in both tiers");
    assert.ok(["b", "s", "I", "l"].includes(wire["leveret-retry-count"].tag), `count sent as '${wire["leveret-retry-count"].tag}'`);
    assert.equal(wire["leveret-retry-count"].tag, "I");
    assert.equal(wire["leveret-retry-count"].value, 3);
    assert.equal(wire["leveret-version"].tag, "I");
    assert.equal(wire["leveret-reason"].tag, "S");

    const letter = await h.deadLetter(id);
    const headers = letter.properties.headers;
    assert.equal(letter.properties.messageId, id);
    assert.equal(letter.properties.deliveryMode, 2);
    assert.equal(letter.properties.type, "leveret.conformance");
    assert.equal(headers["leveret-retry-count"], 3);
    assert.equal(headers["leveret-reason"], "handler-error");
    assert.equal(headers.traceparent, TRACEPARENT, "every copy keeps the traceparent unchanged");
    assert.equal(headers["leveret-error-type"], "ConformanceFailure");
    assert.equal(headers["leveret-error-message"], "failing on purpose: attempt 3 of 99");
    assert.match(headers["leveret-error-traceback"], /ConformanceFailure: failing on purpose/);
    assert.equal(headers["leveret-original-exchange"], `${h.q}.ex`);
    assert.equal(headers["leveret-original-routing-key"], ROUTING_KEY);
    assert.equal(headers["leveret-failed-queue"], h.q);
    assert.match(headers["leveret-failed-by"], new RegExp(`^${h.q.replace(/\./g, "\\.")}@.+:\\d+$`));
    const iso = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$/;
    assert.match(headers["leveret-first-failed-at"], iso);
    assert.match(headers["leveret-last-failed-at"], iso);
    assert.ok(headers["leveret-first-failed-at"] < headers["leveret-last-failed-at"]);
    // The delivery of attempt 3 came back from a tier with x-death; the copy drops every
    // x- header. (RabbitMQ 3.10's quorum queues add x-delivery-count to a basic.get.)
    const broker = ["x-delivery-count"];
    assert.deepEqual(Object.keys(wire).filter((k) => k.startsWith("x-") && !broker.includes(k)), [], "no x- headers");
    assert.equal(h.receipts.get(id), undefined);
  });

  it("dead-letters bad input at once, with its reason and count 1", async () => {
    const cases = [
      ["invalid-json", { body: "{not json" }],
      ["invalid-content-type", { body: "{}", contentType: "text/plain" }],
      ["unknown-type", { body: "{}", type: "leveret.conformance.unknown" }],
      ["unknown-version", { body: "{}", headers: { "leveret-version": int(99) } }],
      ["unknown-version", { body: "{}", headers: { "leveret-version": "1" } }],
      ["unknown-version", { body: "{}", headers: {} }],
      ["schema-violation", { body: '{"fail_times": "1"}' }],
    ];
    const ids = [];
    for (const [, spec] of cases) ids.push(await h.publish(spec));
    for (const [i, [reason]] of cases.entries()) {
      const letter = await h.deadLetter(ids[i]);
      const headers = letter.properties.headers;
      assert.equal(headers["leveret-reason"], reason, `case ${i}`);
      assert.equal(headers["leveret-retry-count"], 1, `case ${i}`);
      assert.equal(headers["leveret-error-traceback"], undefined, `case ${i}`);
      assert.equal(letter.properties.messageId, ids[i]);
    }
    const wire = await h.publish({ body: "[]" }).then((id) => waitFor(() => peekHeaders(URL_, `${h.q}.dlq`, id), "the dead letter"));
    assert.equal(wire["leveret-reason"].value, "schema-violation");
    assert.equal(wire["leveret-retry-count"].tag, "I");
  });

  it("SIGTERM mid-handler: the handler finishes, the task is acked, exit 0", async () => {
    const id = await h.publish({ payload: { sleep_ms: 1500 } });
    await waitFor(async () => (await h.ch.checkQueue(h.q)).messageCount === 0, "the worker to take the task");
    await sleep(300);
    h.worker.kill("SIGTERM");
    const { code } = await h.worker.exited;
    assert.equal(code, 0, `exit ${code}: ${h.worker.lines.slice(-8).join("\n")}`);
    assert.deepEqual((await h.receipt(id)).map((r) => r.attempt), [1]);
    // Acked, not requeued: Q empties (a quorum queue's count settles a moment after the ack).
    await waitFor(async () => (await h.ch.checkQueue(h.q)).messageCount === 0, "Q to be empty", 5000);
    assert.equal(h.worker.events("worker.draining").length, 1);
  });
});

describe("a copy the broker returns", { skip, timeout: 60_000 }, () => {
  const h = new Harness("returned", { unboundDead: true });
  before(() => h.setUp());
  after(() => h.tearDown());

  it("is not acked: the delivery is rejected without requeue, to Q's dead-letter exchange", async () => {
    const worker = await h.start();
    const id = await h.publish({ body: "{not json" });
    const letter = await h.deadLetter(id, `${h.q}.rejected`);
    const death = letter.properties.headers["x-death"];
    assert.equal(death[0].reason, "rejected");
    assert.equal(death[0].queue, h.q);
    assert.equal(letter.properties.headers["leveret-reason"], undefined, "no failure before this one");
    await waitFor(() => worker.events("message.republish_failed").length === 1, "the log of the return");
    const [line] = worker.events("message.dead_lettered");
    assert.equal(line.reason, "invalid-json");
  });
});

const rabbitmqctl = await promisify(execFile)("rabbitmqctl", ["list_connections", "name", "--quiet"])
  .then(() => true)
  .catch(() => false);

describe("reconnecting", { skip: skip || (!rabbitmqctl && "rabbitmqctl is not available"), timeout: 60_000 }, () => {
  const h = new Harness("reconnect");
  before(() => h.setUp());
  after(() => h.tearDown());

  it("consumes again after the broker closes its connection", async () => {
    const worker = await h.start();
    // One line per connection: "<pid>\t[client properties]"; ours is named after the worker's pid.
    const { stdout } = await promisify(execFile)("rabbitmqctl", ["list_connections", "pid", "client_properties", "--quiet"]);
    const mine = stdout.split("\n").filter((line) => line.includes(`leveret-node-worker `) && line.includes(`:${worker.pid}`));
    assert.equal(mine.length, 1, stdout);
    const pid = mine[0].split("\t")[0];
    await promisify(execFile)("rabbitmqctl", ["close_connection", pid, "test: forced close", "--quiet"]);
    await waitFor(() => worker.events("worker.resumed").length === 1, "the worker to resume");
    const id = await h.publish({ payload: { note: "after reconnect" } });
    assert.deepEqual((await h.receipt(id)).map((r) => r.attempt), [1]);
    assert.ok(worker.events("worker.connection_lost").length >= 1);
  });
});

const ctl = (...args) => promisify(execFile)("rabbitmqctl", [...args, "--quiet"]);

/** Make the broker nack every publish to `queue` (a classic queue) until the returned function is called. */
async function refuse(queue) {
  const name = `${queue}.refuse`;
  const pattern = `^${queue.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`;
  await ctl("set_policy", name, pattern, JSON.stringify({ "max-length": 0, overflow: "reject-publish" }), "--apply-to", "queues");
  let cleared = false;
  return async () => {
    if (cleared) return;
    cleared = true;
    await ctl("clear_policy", name);
  };
}

/** The number of Q's deliveries the worker holds unacked. */
async function unacked(queue) {
  const { stdout } = await ctl("list_queues", "name", "messages_unacknowledged");
  const line = stdout.split("\n").find((l) => l.split("\t")[0] === queue);
  return Number(line?.split("\t")[1]);
}

describe("a retry copy the broker nacks", { skip: skip || (!rabbitmqctl && "rabbitmqctl is not available"), timeout: 60_000 }, () => {
  it("is sent again, the delivery unacked meanwhile, until the broker takes it", async () => {
    const h = new Harness("nacked", { classic: true });
    await h.setUp();
    const allow = await refuse(`${h.q}.retry.1`);
    try {
      const worker = await h.start();
      const id = await h.publish({ payload: { fail_times: 1 } });
      const [refused] = await waitFor(() => worker.events("message.republish_refused").length && worker.events("message.republish_refused"), "the log of the first nack");
      assert.equal(refused.level, "warning");
      assert.equal(refused.exchange, `${h.q}.retry`);
      assert.ok(refused.sending_again_for > 25 && refused.sending_again_for <= 30, `${refused.sending_again_for}`);
      await sleep(1500); // several resends, each nacked
      assert.equal(worker.events("message.republish_refused").length, 1, "logged once a delivery");
      assert.equal(await unacked(h.q), 1, "the delivery is held, not acked");
      // check, publish and consume, and at most the one resend's channel: each closes after its try
      const { stdout } = await ctl("list_connections", "channels", "client_properties");
      const mine = stdout.split("\n").filter((l) => l.includes("leveret-node-worker ") && l.includes(`:${worker.pid}`));
      assert.equal(mine.length, 1, stdout);
      assert.ok(Number(mine[0].split("\t")[0]) <= 4, mine[0]);
      assert.equal((await h.ch.checkQueue(`${h.q}.dlq`)).messageCount, 0);
      for (const event of ["message.retry_scheduled", "message.dead_lettered", "message.republish_failed"]) {
        assert.deepEqual(worker.events(event), [], event);
      }
      await allow();
      assert.deepEqual((await h.receipt(id)).map((r) => r.attempt), [2]);
      await waitFor(() => worker.events("message.retry_scheduled").length === 1, "the retry's log line");
      assert.equal((await h.ch.checkQueue(`${h.q}.dlq`)).messageCount, 0);
      assert.deepEqual(worker.events("message.republish_failed"), []);
    } finally {
      await allow();
      await h.tearDown();
    }
  });

  it("is dead-lettered once the patience is spent: rejected, with refused_for", async () => {
    const h = new Harness("nacked-long", { classic: true });
    await h.setUp();
    const allow = await refuse(`${h.q}.retry.1`);
    try {
      const worker = await h.start({ LEVERET_REPUBLISH_PATIENCE: "1" });
      const id = await h.publish({ payload: { fail_times: 1 } });
      const letter = await h.deadLetter(id);
      const death = letter.properties.headers["x-death"];
      assert.equal(death[0].reason, "rejected");
      assert.equal(death[0].queue, h.q);
      const [failed] = await waitFor(() => worker.events("message.republish_failed").length && worker.events("message.republish_failed"), "the log of the failure");
      assert.equal(failed.exchange, `${h.q}.retry`);
      assert.ok(failed.refused_for >= 0.5 && failed.refused_for <= 1.5, `refused_for ${failed.refused_for}`);
      assert.equal(worker.events("message.republish_refused").length, 1);
      assert.equal(worker.events("message.dead_lettered").length, 1);
      assert.equal(h.receipts.get(id), undefined);
    } finally {
      await allow();
      await h.tearDown();
    }
  });
});

describe("job status", { skip, timeout: 60_000 }, () => {
  const h = new Harness("status");
  const schemas = available ? Schemas.load(DEFAULT_SCHEMAS) : null;
  const silent = { debug() {}, info() {}, warn() {}, error() {} };
  let worker;
  let running;
  before(async () => {
    await h.setUp();
    await h.ch.assertExchange(STATUS_EXCHANGE, "topic", { durable: true }); // shared: declared if absent, never deleted
    await h.ch.assertQueue(`${h.q}.status`, { exclusive: true });
    // demo.export is tracked; user 13's export fails once, then gives up.
    const fails = (task, ctx) => {
      if (ctx.attempt === 1) throw new Error("disk full");
      throw new DeadLetter("giving up");
    };
    worker = new Worker({
      url: URL_,
      queue: h.q,
      schemas,
      log: silent,
      handlers: [
        { type: "demo.export", versions: [1], track: true, handle: (task, ctx) => (task.user_id === 13 ? fails : exportReport)(task, ctx) },
        { type: "leveret.conformance", versions: [1], handle: conformance },
      ],
    });
    running = worker.run();
    await waitFor(async () => (await h.ch.checkQueue(h.q)).consumerCount > 0, "the worker to consume");
  });
  after(async () => {
    worker?.stop();
    await running;
    await h.tearDown();
  });

  /** Publish a task whose status events go to the test's queue; resolves to the events once `n` arrived. */
  async function events(n, spec) {
    const id = randomUUID();
    await h.ch.bindQueue(`${h.q}.status`, STATUS_EXCHANGE, id);
    await h.publish({ ...spec, messageId: id });
    const got = [];
    const traces = [];
    await waitFor(async () => {
      for (let msg; (msg = await h.ch.get(`${h.q}.status`, { noAck: true })); ) {
        assert.equal(msg.properties.type, "leveret.job.status");
        assert.equal(msg.properties.deliveryMode, 2);
        assert.equal(msg.fields.routingKey, id);
        assert.equal(schemas.validate("leveret.job.status", 1, JSON.parse(msg.content.toString())), null);
        got.push(JSON.parse(msg.content.toString())); // unvalidated: ajv fills in the defaults
        traces.push(parseTraceparent(msg.properties.headers.traceparent));
      }
      return got.length >= n;
    }, `${n} status events of ${id}`);
    assert.ok(got.every((e) => e.job_id === id && /\.\d{6}\+00:00$/.test(e.at)));
    assert.deepEqual([...got].sort((a, b) => (a.at < b.at ? -1 : 1)), got, "in the order of `at`");
    return { id, events: got, traces };
  }

  it("a tracked task reports started, progress, progress, succeeded with its result", async () => {
    const { id, events: got } = await events(4, { type: "demo.export", body: '{"user_id": 5}' });
    assert.deepEqual(
      got.map(({ state, percent, message, result, attempt }) => ({ state, percent, message, result, attempt })),
      [
        { state: "started", percent: undefined, message: undefined, result: undefined, attempt: 1 },
        { state: "progress", percent: 50, message: "wrote part 1 of 2", result: undefined, attempt: 1 },
        { state: "progress", percent: 100, message: "wrote part 2 of 2", result: undefined, attempt: 1 },
        { state: "succeeded", percent: undefined, message: undefined, result: `exports/${id}.csv`, attempt: 1 },
      ],
    );
  });

  it("the status events of a task continue its trace, each with a parent-id of its own", async () => {
    const headers = { "leveret-version": int(1), traceparent: TRACEPARENT };
    const { traces } = await events(4, { type: "demo.export", body: '{"user_id": 5}', headers });
    assert.deepEqual(traces.map((t) => [t?.traceId, t?.flags]), Array(4).fill([TRACE_ID, "01"]));
    assert.equal(new Set([PARENT_ID, ...traces.map((t) => t.parentId)]).size, 5);
  });

  it("a failing tracked task reports retrying, then failed", async () => {
    const { events: got } = await events(4, { type: "demo.export", body: '{"user_id": 13}' });
    assert.deepEqual(
      got.map(({ state, attempt, reason, error }) => ({ state, attempt, reason, error })),
      [
        { state: "started", attempt: 1, reason: undefined, error: undefined },
        { state: "retrying", attempt: 1, reason: undefined, error: "disk full" },
        { state: "started", attempt: 2, reason: undefined, error: undefined },
        { state: "failed", attempt: 2, reason: "dead-letter", error: "giving up" },
      ],
    );
  });

  it("a batch member reports its end with batch_id, its handler untracked", async () => {
    const headers = { "leveret-version": int(1), "leveret-batch-id": "batch-1" };
    const { events: got } = await events(2, { payload: { note: "member" }, headers });
    assert.deepEqual(got.map((e) => [e.state, e.batch_id]), [["started", "batch-1"], ["succeeded", "batch-1"]]);
  });
});

describe("job status with LEVERET_MAX_ATTEMPTS", { skip, timeout: 60_000 }, () => {
  const h = new Harness("maxattempts");
  const schemas = available ? Schemas.load(DEFAULT_SCHEMAS) : null;
  const silent = { debug() {}, info() {}, warn() {}, error() {} };
  let worker;
  let running;
  before(async () => {
    await h.setUp();
    await h.ch.assertExchange(STATUS_EXCHANGE, "topic", { durable: true }); // shared: declared if absent, never deleted
    await h.ch.assertQueue(`${h.q}.status`, { exclusive: true });
    worker = new Worker({
      url: URL_,
      queue: h.q,
      schemas,
      log: silent,
      maxAttempts: TIERS.length + 1, // as LEVERET_MAX_ATTEMPTS=3 gives it
      handlers: [
        { type: "demo.export", versions: [1], track: true, handle: () => { throw new Error("disk full"); } },
        { type: "leveret.conformance", versions: [1], handle: conformance },
      ],
    });
    running = worker.run();
    await waitFor(async () => (await h.ch.checkQueue(h.q)).consumerCount > 0, "the worker to consume");
  });
  after(async () => {
    worker?.stop();
    await running;
    await h.tearDown();
  });

  it("a tracked task failing every attempt reports retrying, then failed on the last", async () => {
    const id = randomUUID();
    await h.ch.bindQueue(`${h.q}.status`, STATUS_EXCHANGE, id);
    await h.publish({ type: "demo.export", body: '{"user_id": 13}', messageId: id });
    const got = [];
    await waitFor(async () => {
      for (let msg; (msg = await h.ch.get(`${h.q}.status`, { noAck: true })); ) {
        assert.equal(schemas.validate("leveret.job.status", 1, JSON.parse(msg.content.toString())), null);
        got.push(JSON.parse(msg.content.toString()));
      }
      return got.length >= 6;
    }, `6 status events of ${id}`);
    assert.deepEqual(
      got.map(({ state, attempt, reason, error }) => ({ state, attempt, reason, error })),
      [
        { state: "started", attempt: 1, reason: undefined, error: undefined },
        { state: "retrying", attempt: 1, reason: undefined, error: "disk full" },
        { state: "started", attempt: 2, reason: undefined, error: undefined },
        { state: "retrying", attempt: 2, reason: undefined, error: "disk full" },
        { state: "started", attempt: 3, reason: undefined, error: undefined },
        { state: "failed", attempt: 3, reason: "handler-error", error: "disk full" },
      ],
    );
    // the copy still went by Q.retry, and on to Q.dlq through the alternate exchange
    const dead = await waitFor(() => h.ch.get(`${h.q}.dlq`, { noAck: true }), "the dead letter");
    assert.equal(dead.properties.headers["leveret-retry-count"], 3);
    assert.equal(dead.properties.headers["leveret-reason"], "handler-error");
  });
});
