// The Publisher and the publish CLI against a real RabbitMQ on 127.0.0.1:5672
// (or LEVERET_TEST_URL). Each test declares its own exchange and queues under
// a unique name and deletes them afterwards. A TCP proxy between the
// publisher and the broker drops or freezes the connection on demand. Without
// a broker the suite is skipped; LEVERET_REQUIRE_BROKER=1 makes that a failure.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import net from "node:net";
import { after, afterEach, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { inspect } from "node:util";
import amqp from "amqplib";
import {
  BrokerUnavailable,
  ExchangeMissing,
  MessageError,
  NotConfirmed,
  PublishError,
  Publisher,
  Unroutable,
  publishExportTask,
  parseTraceparent,
} from "../src/index.js";
import { peekHeaders } from "./helpers/amqp-peek.js";
import { BROKER_URL } from "./helpers/broker.js";

const URL_ = BROKER_URL;
const CLI = fileURLToPath(new URL("../src/publish.js", import.meta.url));
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const SECRET = "s3cr3t-Pa55";
const quiet = { info() {}, warn() {}, error() {} };

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

async function waitFor(predicate, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A URL whose password is SECRET, for a broker at host:port. */
function secretUrl(port, host = "127.0.0.1") {
  const u = new URL(URL_);
  return `amqp://${u.username || "guest"}:${SECRET}@${host}:${port}/`;
}

/** Nothing of SECRET anywhere in an error: message, stack, inspection. */
function assertRedacted(err) {
  for (const text of [err.message, err.stack, String(err), inspect(err, { depth: 5 })]) {
    assert.ok(!text.includes(SECRET), `the password leaked: ${text}`);
  }
}

/**
 * A direct exchange and its queues, all under one unique name:
 * `task` -> queue `name`, `export` -> `name.export`, `full` -> `name.full`
 * (max length 0, reject-publish: every publish to it is nacked).
 */
class Topology {
  constructor(label) {
    this.name = `leveret.node-publisher-test.${label}.${process.pid}.${randomUUID().slice(0, 8)}`;
    this.queues = [this.name, `${this.name}.export`, `${this.name}.full`];
  }

  async setUp(conn) {
    this.ch = await conn.createChannel();
    const { ch, name } = this;
    await ch.assertExchange(name, "direct", { durable: false });
    await ch.assertQueue(name, { durable: false });
    await ch.bindQueue(name, name, "task");
    await ch.assertQueue(`${name}.export`, { durable: false });
    await ch.bindQueue(`${name}.export`, name, "export");
    await ch.assertQueue(`${name}.full`, { durable: false, arguments: { "x-max-length": 0, "x-overflow": "reject-publish" } });
    await ch.bindQueue(`${name}.full`, name, "full");
    return this;
  }

  async tearDown() {
    for (const q of this.queues) await this.ch.deleteQueue(q);
    await this.ch.deleteExchange(this.name);
    await this.ch.close();
  }

  async count(queue = this.name) {
    return (await this.ch.checkQueue(queue)).messageCount;
  }

  /** Every message in a queue, taken off it. */
  async drain(queue = this.name) {
    const out = [];
    for (let msg; (msg = await this.ch.get(queue, { noAck: true })); ) out.push(msg);
    return out;
  }
}

/** A TCP proxy to the broker that can freeze (hold back the broker's frames) and drop its connections. */
async function proxy() {
  const target = new URL(URL_);
  const sockets = new Set();
  let frozen = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5672), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => frozen || client.write(d));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: URL_.replace(/@[^/]+/, `@127.0.0.1:${port}`),
    connections: () => sockets.size / 2,
    freeze: () => (frozen = true),
    drop() {
      for (const s of sockets) s.destroy();
      frozen = false;
    },
    close() {
      server.close();
      this.drop();
    },
  };
}

function cli(args, env = {}) {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { env: { ...process.env, LEVERET_URL: URL_, ...env }, timeout: 30_000 },
      (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }),
    );
  });
}

describe("Publisher against RabbitMQ", { skip, timeout: 60_000 }, () => {
  let admin;
  let publisher;
  let t;

  before(async () => {
    admin = await amqp.connect(URL_);
    publisher = await Publisher.connect({ url: URL_, appId: "node-test", log: quiet });
  });
  after(async () => {
    await publisher?.close();
    await admin?.close();
  });

  const withTopology = (label) => {
    before(async () => {
      t = await new Topology(label).setUp(admin);
    });
    after(() => t.tearDown());
    afterEach(async () => {
      for (const q of t.queues) await t.ch.purgeQueue(q);
    });
  };

  describe("the message on the wire", () => {
    withTopology("wire");

    it("carries the contract's properties and headers, and exactly the JSON body", async () => {
      const payload = { user_id: 7, format: "xlsx" };
      const before = Math.floor(Date.now() / 1000);
      const id = await publisher.publish("demo.export", 2, payload, {
        exchange: t.name,
        routingKey: "task",
        correlationId: "req-7",
        headers: { tenant: "acme", "leveret-retry-count": 5, "leveret-reason": "forged" },
      });
      assert.match(id, UUID);

      // The header types as the broker sends them: leveret-version is an AMQP integer.
      const tags = await waitFor(() => peekHeaders(URL_, t.name, id), "the message in the queue");
      const traceparent = tags.traceparent?.value;
      assert.deepEqual(tags, {
        tenant: { tag: "S", value: "acme" },
        "leveret-version": { tag: "I", value: 2 },
        traceparent: { tag: "S", value: traceparent },
      });
      // Published outside any handler, without a traceparent: a new trace.
      assert.equal(parseTraceparent(traceparent)?.flags, "01");

      const [msg, ...rest] = await waitFor(async () => {
        const got = await t.drain();
        return got.length && got;
      }, "the message back in the queue");
      assert.equal(rest.length, 0);
      const p = msg.properties;
      assert.equal(p.contentType, "application/json");
      assert.equal(p.contentEncoding, "utf-8");
      assert.equal(p.deliveryMode, 2);
      assert.equal(p.type, "demo.export");
      assert.equal(p.messageId, id);
      assert.equal(p.appId, "node-test");
      assert.equal(p.correlationId, "req-7");
      assert.ok(p.timestamp >= before && p.timestamp <= Math.floor(Date.now() / 1000), `timestamp ${p.timestamp}`);
      assert.deepEqual(p.headers, { tenant: "acme", "leveret-version": 2, traceparent });
      for (const absent of ["expiration", "userId", "priority", "replyTo"]) assert.equal(p[absent], undefined, absent);
      // The payload only, as given: no defaults added, and the caller's object untouched.
      assert.equal(msg.content.toString("utf8"), JSON.stringify(payload));
      assert.deepEqual(payload, { user_id: 7, format: "xlsx" });
      assert.deepEqual({ exchange: msg.fields.exchange, routingKey: msg.fields.routingKey }, { exchange: t.name, routingKey: "task" });
    });

    it("continues a traceparent the caller passes: same trace-id and flags, a new parent-id", async () => {
      const given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
      const headers = { traceparent: given, tracestate: "congo=t61rcWkgMzE" };
      await publisher.publish("demo.export", 1, { user_id: 1 }, { exchange: t.name, routingKey: "task", headers });
      await publisher.publish("demo.export", 1, { user_id: 2 }, { exchange: t.name, routingKey: "task", headers: { traceparent: "garbage" } });
      const [traced, untraced] = await waitFor(async () => {
        const got = await t.drain();
        return got.length === 2 && got.sort((a, b) => a.content.toString().localeCompare(b.content.toString()));
      }, "both messages");
      const sent = parseTraceparent(traced.properties.headers.traceparent);
      assert.deepEqual([sent.traceId, sent.flags], ["4bf92f3577b34da6a3ce929d0e0e4736", "00"]);
      assert.notEqual(sent.parentId, "00f067aa0ba902b7");
      assert.equal(traced.properties.headers.tracestate, "congo=t61rcWkgMzE");
      assert.deepEqual(headers, { traceparent: given, tracestate: "congo=t61rcWkgMzE" }, "the caller's headers untouched");
      // An invalid one is replaced by a new trace.
      const fresh = parseTraceparent(untraced.properties.headers.traceparent);
      assert.notEqual(fresh, null);
      assert.notEqual(fresh.traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
    });

    it("keeps a message id it is given", async () => {
      const given = randomUUID();
      assert.equal(await publisher.publish("demo.export", 1, { user_id: 1 }, { exchange: t.name, routingKey: "task", messageId: given }), given);
      const [msg] = await t.drain();
      assert.equal(msg.properties.messageId, given);
    });

    it("publishExportTask: demo.export v2 with the export routing key", async () => {
      const id = await publishExportTask(publisher, 9, "csv", { columns: ["id", "total"], exchange: t.name, correlationId: "job-9" });
      const [msg] = await waitFor(async () => {
        const got = await t.drain(`${t.name}.export`);
        return got.length && got;
      }, "the export task");
      assert.equal(msg.properties.messageId, id);
      assert.equal(msg.properties.type, "demo.export");
      assert.equal(msg.properties.headers["leveret-version"], 2);
      assert.equal(msg.properties.correlationId, "job-9");
      assert.equal(msg.fields.routingKey, "export");
      assert.deepEqual(JSON.parse(msg.content), { user_id: 9, format: "csv", columns: ["id", "total"] });
    });
  });

  describe("refusals before sending", () => {
    withTopology("refusals");
    const route = () => ({ exchange: t.name, routingKey: "task" });

    it("a schema violation throws and sends nothing", async () => {
      for (const bad of [{ user_id: "7" }, { user_id: 0 }, { user_id: 1, format: "pdf" }, [], null]) {
        const err = await publisher.publish("demo.export", 2, bad, route()).then(
          () => assert.fail(`published ${JSON.stringify(bad)}`),
          (e) => e,
        );
        assert.ok(err instanceof MessageError, err);
        assert.equal(err.reason, "schema-violation");
        assert.equal(err.name, "SchemaViolation");
        assert.match(err.message, /^not published: demo\.export v2: /);
      }
      await assert.rejects(publisher.publish("demo.export", 2, undefined, route()), { reason: "invalid-json" });
      await assert.rejects(publisher.publish("demo.export", 2, { user_id: 1n }, route()), { reason: "invalid-json" });
      await sleep(100);
      assert.equal(await t.count(), 0);
    });

    it("an unknown type or version throws and sends nothing", async () => {
      await assert.rejects(publisher.publish("demo.nope", 1, {}, route()), {
        name: "UnknownMessageType",
        reason: "unknown-type",
        message: /no schema for message type 'demo\.nope'/,
      });
      await assert.rejects(publisher.publish("demo.export", 3, { user_id: 1 }, route()), {
        reason: "unknown-version",
        message: /demo\.export v3 \(known versions: 1, 2\)/,
      });
      await assert.rejects(publisher.publish("demo.export", "2", { user_id: 1 }, route()), { reason: "unknown-version" });
      await sleep(100);
      assert.equal(await t.count(), 0);
    });

    it("refuses a body over the limit: 1 MiB by default, configurable", async () => {
      const big = { user_id: 1, columns: ["x".repeat(1024 * 1024)] };
      await assert.rejects(publisher.publish("demo.export", 2, big, route()), {
        name: "MessageTooLarge",
        reason: "too-large",
        message: /body is 1048\d{3} bytes, over the limit of 1048576/,
      });
      const small = new Publisher({ url: URL_, maxSize: 20, log: quiet });
      try {
        await assert.rejects(small.publish("demo.export", 2, { user_id: 1, format: "xlsx" }, route()), {
          reason: "too-large",
          message: /over the limit of 20$/,
        });
        assert.match(await small.publish("demo.export", 2, { user_id: 1 }, route()), UUID); // 13 bytes
      } finally {
        await small.close();
      }
      assert.equal((await t.drain()).length, 1);
    });

    it("publishMany checks every message first: one invalid, nothing sent", async () => {
      const ok = { type: "demo.export", version: 1, payload: { user_id: 1 }, ...route() };
      await assert.rejects(publisher.publishMany([ok, ok, { ...ok, payload: { user_id: -1 } }]), {
        reason: "schema-violation",
        message: /^message 2: not published/,
      });
      await sleep(100);
      assert.equal(await t.count(), 0);
    });

    it("requires an exchange and a routing key", async () => {
      await assert.rejects(publisher.publish("demo.export", 1, { user_id: 1 }, { exchange: t.name }), TypeError);
      await assert.rejects(publisher.publish("demo.export", 1, { user_id: 1 }), TypeError);
    });
  });

  describe("what the broker says", () => {
    withTopology("broker");

    it("an unroutable message is an error, not a silent confirm", async () => {
      const err = await publisher.publish("demo.export", 1, { user_id: 1 }, { exchange: t.name, routingKey: "nobody" }).catch((e) => e);
      assert.ok(err instanceof Unroutable, err);
      assert.ok(err instanceof PublishError);
      assert.match(err.message, /^message [0-9a-f-]{36} \(demo\.export\) is unroutable: no queue is bound to exchange '.*' with routing key 'nobody'$/);
      // The channel is fine afterwards.
      assert.match(await publisher.publish("demo.export", 1, { user_id: 1 }, { exchange: t.name, routingKey: "task" }), UUID);
    });

    it("a nack is an error", async () => {
      const err = await publisher.publish("demo.export", 1, { user_id: 1 }, { exchange: t.name, routingKey: "full" }).catch((e) => e);
      assert.ok(err instanceof NotConfirmed, err);
      assert.match(err.message, /the broker nacked message [0-9a-f-]{36}/);
    });

    it("a missing exchange fails its own publish only", async () => {
      const route = { exchange: t.name, routingKey: "task" };
      const results = await Promise.allSettled([
        publisher.publish("demo.export", 1, { user_id: 1 }, route),
        publisher.publish("demo.export", 1, { user_id: 2 }, { exchange: `${t.name}.missing`, routingKey: "task" }),
        publisher.publish("demo.export", 1, { user_id: 3 }, route),
      ]);
      assert.deepEqual(results.map((r) => r.status), ["fulfilled", "rejected", "fulfilled"]);
      assert.ok(results[1].reason instanceof ExchangeMissing, results[1].reason);
      assert.match(results[1].reason.message, /exchange '.*\.missing' does not exist; run `leveret topology apply`/);
      assert.equal(await t.count(), 2);
    });

    it("many concurrent publishes are all confirmed, on one connection", async () => {
      const route = { exchange: t.name, routingKey: "task" };
      const p = await proxy();
      const many = new Publisher({ url: p.url, log: quiet });
      try {
        const single = Array.from({ length: 300 }, (_, i) => many.publish("demo.export", 1, { user_id: i + 1 }, route));
        const batch = many.publishMany(
          Array.from({ length: 200 }, (_, i) => ({ type: "demo.export", version: 2, payload: { user_id: i + 1 }, ...route })),
        );
        const ids = [...(await Promise.all(single)), ...(await batch)];
        assert.equal(new Set(ids).size, 500);
        assert.equal(p.connections(), 1);
        const got = await waitFor(async () => (await t.count()) === 500 && t.drain(), "500 messages");
        assert.deepEqual(new Set(got.map((m) => m.properties.messageId)), new Set(ids));
      } finally {
        await many.close();
        p.close();
      }
    });

    it("publishMany reports which messages were not confirmed", async () => {
      const ok = { type: "demo.export", version: 1, payload: { user_id: 1 }, exchange: t.name, routingKey: "task" };
      const err = await publisher.publishMany([ok, { ...ok, routingKey: "nobody" }, ok]).catch((e) => e);
      assert.ok(err instanceof AggregateError, err);
      assert.match(err.message, /^1 of 3 messages not published; first: message .* is unroutable/);
      assert.deepEqual(err.results.map((r) => r.error?.name ?? "ok"), ["ok", "Unroutable", "ok"]);
      assert.ok(err.results.every((r) => UUID.test(r.messageId)));
      assert.equal(await t.count(), 2);
    });
  });

  describe("a lost connection", () => {
    withTopology("reconnect");
    const route = () => ({ exchange: t.name, routingKey: "task" });

    it("the next publish reconnects", async () => {
      const p = await proxy();
      const pub = await Publisher.connect({ url: p.url, log: quiet });
      try {
        await pub.publish("demo.export", 1, { user_id: 1 }, route());
        p.drop();
        await waitFor(() => p.connections() === 0, "the drop");
        await pub.publish("demo.export", 1, { user_id: 2 }, route());
        assert.equal(await t.count(), 2);
      } finally {
        await pub.close();
        p.close();
      }
    });

    it("a publish in flight is published again with the same message id: a duplicate, never a loss", async () => {
      const p = await proxy();
      const pub = await Publisher.connect({ url: p.url, log: quiet });
      try {
        await pub.publish("demo.export", 1, { user_id: 1 }, route()); // the exchange is known: no more RPCs
        await t.drain();
        p.freeze(); // the broker gets the message, its confirm never comes through
        const sent = pub.publish("demo.export", 1, { user_id: 1 }, route());
        await waitFor(async () => (await t.count()) === 1, "the first copy");
        p.drop();
        const id = await sent;
        const got = await waitFor(async () => (await t.count()) === 2 && t.drain(), "the second copy");
        assert.deepEqual(got.map((m) => m.properties.messageId), [id, id]);
      } finally {
        await pub.close();
        p.close();
      }
    });

    it("a publish in flight fails clearly when the broker stays away", async () => {
      const p = await proxy();
      const warnings = [];
      const pub = await Publisher.connect({
        url: p.url,
        reconnectTimeoutMs: 500,
        log: { ...quiet, warn: (event, fields) => warnings.push({ event, ...fields }) },
      });
      try {
        await pub.publish("demo.export", 1, { user_id: 1 }, route());
        p.freeze();
        const sent = pub.publish("demo.export", 1, { user_id: 1 }, route());
        await waitFor(async () => (await t.count()) === 2, "the message");
        const started = Date.now();
        p.close();
        const err = await sent.catch((e) => e);
        assert.ok(err instanceof BrokerUnavailable, err);
        assert.match(err.message, /^message [0-9a-f-]{36} \(demo\.export\) not published: no RabbitMQ broker reachable at amqp:\/\/guest:\*\*\*@127\.0\.0\.1:\d+\/ within 0\.5 s/);
        assert.ok(Date.now() - started < 5000);
        assert.ok(warnings.some((w) => w.event === "publisher.reconnecting"), JSON.stringify(warnings));
      } finally {
        await pub.close();
      }
    });

    it("no confirm within the confirm timeout is an error", async () => {
      const p = await proxy();
      const pub = await Publisher.connect({ url: p.url, confirmTimeoutMs: 300, log: quiet });
      try {
        p.freeze();
        await assert.rejects(pub.publish("demo.export", 1, { user_id: 1 }, route()), {
          name: "NotConfirmed",
          message: /no confirm for message [0-9a-f-]{36} within 0\.3 s; .*publish it again with the same message id/,
        });
      } finally {
        p.drop();
        await pub.close();
        p.close();
      }
    });

    it("close() waits for the publishes in flight, then refuses new ones", async () => {
      const pub = await Publisher.connect({ url: URL_, log: quiet });
      const sent = Array.from({ length: 50 }, (_, i) => pub.publish("demo.export", 1, { user_id: i + 1 }, route()));
      await pub.close();
      assert.equal((await Promise.all(sent)).length, 50);
      await assert.rejects(pub.publish("demo.export", 1, { user_id: 1 }, route()), { name: "PublishError", message: /publisher is closed/ });
    });
  });

  describe("credentials", () => {
    it("a refused password: BrokerUnavailable at once, redacted", async () => {
      const u = new URL(URL_);
      const err = await Publisher.connect({ url: secretUrl(u.port || 5672, u.hostname), log: quiet }).catch((e) => e);
      assert.ok(err instanceof BrokerUnavailable, err);
      assert.match(err.message, /refused the credentials/);
      assert.match(err.message, /guest:\*\*\*@/);
      assertRedacted(err);
    });

    it("no broker: redacted in the error and in every log line", async () => {
      const lines = [];
      const log = Object.fromEntries(["info", "warn", "error"].map((level) => [level, (event, fields) => lines.push(JSON.stringify({ level, event, ...fields }))]));
      const pub = new Publisher({ url: secretUrl(1), reconnectTimeoutMs: 400, log });
      assert.ok(!inspect(pub, { depth: 5 }).includes(SECRET));
      assert.equal(pub.url, "amqp://guest:***@127.0.0.1:1/");
      const err = await pub.publish("demo.export", 1, { user_id: 1 }, { exchange: "x", routingKey: "y" }).catch((e) => e);
      assert.ok(err instanceof BrokerUnavailable, err);
      assertRedacted(err);
      assert.ok(lines.length > 0);
      for (const line of lines) assert.ok(!line.includes(SECRET), line);
      await pub.close();
    });
  });

  describe("the publish CLI", () => {
    withTopology("cli");
    const base = () => ["--exchange", t.name, "--routing-key", "task", "--type", "demo.export", "--version", "2"];

    it("prints the message id after the confirm", async () => {
      const given = randomUUID();
      const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
      const headers = ["--header", "tenant=acme", "--header", `traceparent=${parent}`];
      const { code, stdout, stderr } = await cli([...base(), "--message-id", given, "--correlation-id", "c-1", "--app-id", "cli", ...headers, '{"user_id": 8, "columns": ["id"]}']);
      assert.equal(code, 0, stderr);
      assert.equal(stdout, `${given}\n`);
      assert.equal(stderr, "");
      const [msg] = await t.drain();
      assert.equal(msg.properties.messageId, given);
      assert.equal(msg.properties.correlationId, "c-1");
      assert.equal(msg.properties.appId, "cli");
      const { traceparent, ...rest } = msg.properties.headers;
      assert.deepEqual(rest, { tenant: "acme", "leveret-version": 2 });
      // --header traceparent=... is the parent: the same trace, a new parent-id.
      assert.equal(parseTraceparent(traceparent)?.traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
      assert.notEqual(traceparent, parent);
      assert.deepEqual(JSON.parse(msg.content), { user_id: 8, columns: ["id"] });

      const fresh = await cli([...base(), '{"user_id": 9}']);
      assert.equal(fresh.code, 0, fresh.stderr);
      assert.match(fresh.stdout.trim(), UUID);
    });

    it("fails with one line on stderr: invalid, unroutable, no exchange, broker down, bad usage", async () => {
      const cases = [
        [[...base(), '{"user_id": "8"}'], {}, 1, /^leveret-publish: not published: demo\.export v2: body\/user_id must be integer$/],
        [[...base().slice(0, 2), "--routing-key", "nobody", ...base().slice(4), '{"user_id": 8}'], {}, 1, /is unroutable: no queue is bound to exchange '.*' with routing key 'nobody'$/],
        [["--exchange", `${t.name}.missing`, ...base().slice(2), '{"user_id": 8}'], {}, 1, /exchange '.*\.missing' does not exist; run `leveret topology apply`$/],
        [[...base(), "--reconnect-timeout", "0.3", '{"user_id": 8}'], { LEVERET_URL: secretUrl(1) }, 1, /no RabbitMQ broker reachable at amqp:\/\/guest:\*\*\*@127\.0\.0\.1:1\/ within 0\.3 s/],
        [["--url", secretUrl(1), ...base(), "--reconnect-timeout", "0", '{"user_id": 8}'], {}, 1, /guest:\*\*\*@127\.0\.0\.1:1\//],
        [[...base(), "{not json"], {}, 2, /^leveret-publish: the payload is not JSON: .* \(see --help\)$/],
        [["--type", "demo.export", '{"user_id": 8}'], {}, 2, /^leveret-publish: --exchange is required \(see --help\)$/],
      ];
      for (const [args, env, status, pattern] of cases) {
        const { code, stdout, stderr } = await cli(args, env);
        assert.equal(code, status, `${args.join(" ")}: ${stderr}`);
        assert.equal(stdout, "");
        const lines = stderr.trimEnd().split("\n");
        assert.equal(lines.length, 1, stderr);
        assert.match(lines[0], pattern);
        assert.ok(!stderr.includes(SECRET), stderr);
      }
      assert.equal(await t.count(), 0);
    });
  });
});
