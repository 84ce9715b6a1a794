// Unit tests of the pure parts: reading a delivery, the checks of steps 1-5,
// the copy of a failed delivery (headers, properties, truncation, budget),
// and a new message (§3).

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_SCHEMAS } from "../src/config.js";
import { Schemas } from "../src/schemas.js";
import {
  DeadLetter,
  H,
  HandlerTimeout,
  MAX_HEADERS,
  MessageError,
  amqpInt,
  encodedSize,
  failure,
  fit,
  isoUtc,
  outgoing,
  publishProperties,
  resolve,
  toDelivery,
  truncate,
} from "../src/wire.js";

const NOW = new Date("2026-01-02T03:04:05.123Z");
const CONSUMER = "jobs@host:42";

function message({ body = '{"user_id": 1}', headers = { [H.VERSION]: 1 }, fields = {}, ...props } = {}) {
  return {
    content: Buffer.isBuffer(body) ? body : Buffer.from(body),
    fields: { exchange: "app", routingKey: "export", redelivered: false, deliveryTag: 1, ...fields },
    properties: {
      contentType: "application/json",
      deliveryMode: 2,
      messageId: "m-1",
      type: "demo.export",
      timestamp: 1_700_000_000,
      headers,
      ...props,
    },
  };
}

const delivery = (opts) => toDelivery(message(opts));

describe("toDelivery", () => {
  it("reads the retry count: absent is 0, attempt is count + 1", () => {
    const d = delivery();
    assert.equal(d.retryCount, 0);
    assert.equal(d.attempt, 1);
    assert.equal(delivery({ headers: { [H.RETRY_COUNT]: 2 } }).attempt, 3);
  });

  it("reads a count or version that is not an integer as absent", () => {
    for (const bad of ["2", true, 1.5, null, { "!": "timestamp", value: 2 }]) {
      const d = delivery({ headers: { [H.RETRY_COUNT]: bad, [H.VERSION]: bad } });
      assert.equal(d.retryCount, 0, `count ${JSON.stringify(bad)}`);
      assert.equal(d.version, null, `version ${JSON.stringify(bad)}`);
    }
  });

  it("keeps routing: exchange and routing key, '' for the default exchange", () => {
    const d = delivery({ fields: { exchange: "", routingKey: "jobs", redelivered: true } });
    assert.equal(d.exchange, "");
    assert.equal(d.routingKey, "jobs");
    assert.equal(d.redelivered, true);
  });
});

describe("resolve (steps 1-5)", () => {
  const handlers = new Map([["demo.export", { type: "demo.export", versions: new Set([1, 2]) }]]);
  const validate = (_type, _version, value) =>
    value && typeof value === "object" && !Array.isArray(value) && Number.isInteger(value.user_id) ? null : "user_id must be integer";
  const check = (opts, maxSize) => resolve(delivery(opts), { handlers, validate, maxSize });
  const reasonOf = (opts, maxSize) => {
    try {
      check(opts, maxSize);
      return "ok";
    } catch (err) {
      assert.ok(err instanceof MessageError, `not a MessageError: ${err}`);
      return err.reason;
    }
  };

  it("accepts a valid message and returns the payload", () => {
    const { handler, version, payload } = check({ body: '{"user_id": 7}', headers: { [H.VERSION]: 2 } });
    assert.equal(handler.type, "demo.export");
    assert.equal(version, 2);
    assert.deepEqual(payload, { user_id: 7 });
  });

  it("1. size: too-large, before anything else", () => {
    assert.equal(reasonOf({ body: '{"user_id": 1}   ', contentType: undefined }, 10), "too-large");
  });

  it("2. content type: missing or not JSON; case and parameters ignored", () => {
    assert.equal(reasonOf({ contentType: undefined }), "invalid-content-type");
    assert.equal(reasonOf({ contentType: "text/plain" }), "invalid-content-type");
    assert.equal(reasonOf({ contentType: "Application/JSON; charset=utf-8" }), "ok");
  });

  it("3. type: missing, or no handler", () => {
    assert.equal(reasonOf({ type: undefined }), "unknown-type");
    assert.equal(reasonOf({ type: "demo.other" }), "unknown-type");
  });

  it("4. version: missing, not an integer, or not accepted", () => {
    assert.equal(reasonOf({ headers: {} }), "unknown-version");
    assert.equal(reasonOf({ headers: { [H.VERSION]: "1" } }), "unknown-version");
    assert.equal(reasonOf({ headers: { [H.VERSION]: true } }), "unknown-version");
    assert.equal(reasonOf({ headers: { [H.VERSION]: 3 } }), "unknown-version");
  });

  it("5. body: invalid UTF-8 or invalid JSON, then schema-violation", () => {
    assert.equal(reasonOf({ body: "{not json" }), "invalid-json");
    assert.equal(reasonOf({ body: Buffer.from([0x7b, 0xff, 0x7d]) }), "invalid-json");
    assert.equal(reasonOf({ body: '{"user_id": "1"}' }), "schema-violation");
    assert.equal(reasonOf({ body: "[1]" }), "schema-violation");
  });

  it("checks in the contract's order: type before version before body", () => {
    assert.equal(reasonOf({ type: "nope", headers: {}, body: "{" }), "unknown-type");
    assert.equal(reasonOf({ headers: {}, body: "{" }), "unknown-version");
  });
});

describe("failure: the copy", () => {
  const transient = new Error("boom");

  it("a handler error goes to Q.retry with the count + 1 as an AMQP integer", () => {
    const copy = failure(delivery({ headers: { [H.VERSION]: 1, [H.RETRY_COUNT]: 1 } }), "jobs", transient, { consumer: CONSUMER, now: NOW });
    assert.equal(copy.exchange, "jobs.retry");
    assert.equal(copy.routingKey, "");
    assert.equal(copy.permanent, false);
    assert.equal(copy.reason, "handler-error");
    assert.deepEqual(copy.headers[H.RETRY_COUNT], { "!": "int", value: 2 });
    assert.deepEqual(copy.headers[H.VERSION], { "!": "int", value: 1 });
  });

  it("sets the failure headers", () => {
    const { headers } = failure(delivery(), "jobs", transient, { consumer: CONSUMER, now: NOW });
    assert.equal(headers[H.REASON], "handler-error");
    assert.equal(headers[H.ERROR_TYPE], "Error");
    assert.equal(headers[H.ERROR_MESSAGE], "boom");
    assert.equal(headers[H.LAST_FAILED_AT], "2026-01-02T03:04:05.123+00:00");
    assert.equal(headers[H.FIRST_FAILED_AT], "2026-01-02T03:04:05.123+00:00");
    assert.equal(headers[H.FAILED_BY], CONSUMER);
    assert.equal(headers[H.FAILED_QUEUE], "jobs");
    assert.equal(headers[H.ORIGINAL_EXCHANGE], "app");
    assert.equal(headers[H.ORIGINAL_ROUTING_KEY], "export");
    assert.match(headers[H.ERROR_TRACEBACK], /^Error: boom\n\s+at /);
  });

  it("keeps the first-failure headers when present; drops x- headers; keeps application headers", () => {
    const earlier = {
      [H.VERSION]: 1,
      [H.RETRY_COUNT]: 1,
      [H.FIRST_FAILED_AT]: "2025-12-31T00:00:00.000+00:00",
      [H.ORIGINAL_EXCHANGE]: "first",
      [H.ORIGINAL_ROUTING_KEY]: "route",
      "x-death": [{ count: 1 }],
      "x-first-death-queue": "jobs.retry.1",
      tenant: "acme",
    };
    const d = delivery({ headers: earlier, fields: { exchange: "", routingKey: "jobs" } });
    const { headers } = failure(d, "jobs", transient, { consumer: CONSUMER, now: NOW });
    assert.equal(headers[H.FIRST_FAILED_AT], "2025-12-31T00:00:00.000+00:00");
    assert.equal(headers[H.ORIGINAL_EXCHANGE], "first");
    assert.equal(headers[H.ORIGINAL_ROUTING_KEY], "route");
    assert.equal(headers[H.LAST_FAILED_AT], "2026-01-02T03:04:05.123+00:00");
    assert.equal(headers.tenant, "acme");
    assert.ok(!Object.keys(headers).some((k) => k.startsWith("x-")), Object.keys(headers).join());
  });

  it("a permanent failure goes to Q.dead, counts too, and carries no traceback", () => {
    const d = delivery({ headers: { [H.VERSION]: 1, [H.ERROR_TRACEBACK]: "old" } });
    const copy = failure(d, "jobs", new MessageError("invalid-json", "bad"), { consumer: CONSUMER, now: NOW });
    assert.equal(copy.exchange, "jobs.dead");
    assert.equal(copy.permanent, true);
    assert.equal(copy.outcome, "dead_lettered");
    assert.equal(copy.headers[H.REASON], "invalid-json");
    assert.equal(copy.headers[H.ERROR_TYPE], "DecodeError");
    assert.deepEqual(copy.headers[H.RETRY_COUNT], { "!": "int", value: 1 });
    assert.ok(!(H.ERROR_TRACEBACK in copy.headers));
  });

  it("DeadLetter from a handler is permanent with reason dead-letter; a timeout is transient", () => {
    const given = failure(delivery(), "jobs", new DeadLetter("user deleted"), { consumer: CONSUMER, now: NOW });
    assert.equal(given.exchange, "jobs.dead");
    assert.equal(given.reason, "dead-letter");
    assert.equal(given.headers[H.ERROR_MESSAGE], "user deleted");
    const late = failure(delivery(), "jobs", new HandlerTimeout("too slow"), { consumer: CONSUMER, now: NOW });
    assert.equal(late.exchange, "jobs.retry");
    assert.equal(late.headers[H.ERROR_TYPE], "TimeoutError");
  });

  it("copes with a thrown value that is not an Error", () => {
    const copy = failure(delivery(), "jobs", "plain string", { consumer: CONSUMER, now: NOW });
    assert.equal(copy.headers[H.ERROR_TYPE], "string");
    assert.equal(copy.headers[H.ERROR_MESSAGE], "plain string");
    assert.ok(!(H.ERROR_TRACEBACK in copy.headers));
  });

  it("properties: the delivery's minus expiration and user id, persistent, same message id", () => {
    const d = delivery({ expiration: "60000", userId: "guest", deliveryMode: 1, correlationId: "c", appId: "a", priority: 3 });
    const { properties } = failure(d, "jobs", transient, { consumer: CONSUMER, now: NOW });
    assert.equal(properties.expiration, undefined);
    assert.equal(properties.userId, undefined);
    assert.equal(properties.deliveryMode, 2);
    assert.equal(properties.messageId, "m-1");
    assert.equal(properties.type, "demo.export");
    assert.equal(properties.timestamp, 1_700_000_000);
    assert.equal(properties.contentType, "application/json");
    assert.equal(properties.correlationId, "c");
    assert.equal(properties.appId, "a");
    assert.equal(properties.priority, 3);
    assert.equal(properties.headers[H.REASON], "handler-error");
  });

  it("cuts long error texts: message keeps its start, traceback its end", () => {
    const err = new Error("é".repeat(3000));
    err.stack = `Error: top\n${"  at frame\n".repeat(1000)}  at last-frame`;
    const { headers } = failure(delivery(), "jobs", err, { consumer: CONSUMER, now: NOW });
    assert.ok(Buffer.byteLength(headers[H.ERROR_MESSAGE]) <= 1024);
    assert.ok(headers[H.ERROR_MESSAGE].endsWith("…[truncated]"));
    assert.ok(Buffer.byteLength(headers[H.ERROR_TRACEBACK]) <= 4096);
    assert.ok(headers[H.ERROR_TRACEBACK].startsWith("…[truncated]"));
    assert.ok(headers[H.ERROR_TRACEBACK].endsWith("at last-frame"));
  });
});

describe("truncate", () => {
  it("leaves short text alone", () => {
    assert.equal(truncate("short", 1024), "short");
  });

  it("cuts at a character boundary, within the limit, marking the cut", () => {
    for (const limit of [20, 21, 22, 23]) {
      const start = truncate("€".repeat(100), limit);
      assert.ok(Buffer.byteLength(start) <= limit, `${limit}: ${Buffer.byteLength(start)}`);
      assert.match(start, /^€+…\[truncated\]$/);
      const end = truncate("€".repeat(100), limit, "end");
      assert.ok(Buffer.byteLength(end) <= limit);
      assert.match(end, /^…\[truncated\]€+$/);
    }
  });
});

describe("the header budget", () => {
  it("drops the traceback first, then the largest application headers, never leveret's", () => {
    const headers = {
      [H.REASON]: "handler-error",
      [H.ERROR_TRACEBACK]: "t".repeat(4000),
      big: "b".repeat(40_000),
      bigger: "B".repeat(50_000),
      small: "s",
    };
    fit(headers, MAX_HEADERS);
    assert.ok(encodedSize(headers) <= MAX_HEADERS);
    assert.ok(!(H.ERROR_TRACEBACK in headers));
    assert.ok(!("bigger" in headers));
    assert.equal(headers.big.length, 40_000);
    assert.equal(headers.small, "s");
    assert.equal(headers[H.DROPPED_HEADERS], "bigger");
    assert.equal(headers[H.REASON], "handler-error");
  });

  it("leaves a table within budget untouched", () => {
    const headers = { a: "x", [H.ERROR_TRACEBACK]: "t" };
    fit(headers, MAX_HEADERS);
    assert.deepEqual(headers, { a: "x", [H.ERROR_TRACEBACK]: "t" });
  });

  it("a failure with huge application headers still fits", () => {
    const d = delivery({ headers: { [H.VERSION]: 1, blob: "z".repeat(70_000) } });
    const { headers } = failure(d, "jobs", new Error("x"), { consumer: CONSUMER, now: NOW });
    assert.ok(encodedSize(headers) <= MAX_HEADERS);
    assert.equal(headers[H.DROPPED_HEADERS], "blob");
  });
});

describe("small helpers", () => {
  it("amqpInt pins a 32-bit signed integer, 64-bit beyond", () => {
    assert.deepEqual(amqpInt(3), { "!": "int", value: 3 });
    assert.deepEqual(amqpInt(2 ** 31), { "!": "long", value: 2 ** 31 });
    assert.throws(() => amqpInt(1.5), TypeError);
  });

  it("isoUtc writes milliseconds and +00:00", () => {
    assert.equal(isoUtc(NOW), "2026-01-02T03:04:05.123+00:00");
  });

  it("publishProperties: the contract's properties, never a retry count", () => {
    const props = publishProperties({
      type: "t",
      version: 1,
      messageId: "id",
      headers: { [H.RETRY_COUNT]: 5, [H.REASON]: "forged", tenant: "acme" },
      now: 1_700_000_000_999,
    });
    assert.deepEqual(props, {
      contentType: "application/json",
      contentEncoding: "utf-8",
      deliveryMode: 2,
      messageId: "id",
      type: "t",
      timestamp: 1_700_000_000,
      headers: { tenant: "acme", [H.VERSION]: { "!": "int", value: 1 } },
    });
    const more = publishProperties({ type: "t", version: 2, messageId: "id", correlationId: "c", appId: "web" });
    assert.equal(more.correlationId, "c");
    assert.equal(more.appId, "web");
  });
});

describe("outgoing: a new message (§3)", () => {
  const schemas = Schemas.load(DEFAULT_SCHEMAS);
  const refused = (fn) => {
    try {
      fn();
    } catch (err) {
      assert.ok(err instanceof MessageError, err);
      return err;
    }
    assert.fail("not refused");
  };

  it("the body is the payload as given, validated as a consumer reads it", () => {
    const payload = { user_id: 3 };
    const { body, properties } = outgoing(schemas, "demo.export", 2, payload, { correlationId: "c", appId: "a", now: 1_700_000_000_000 });
    assert.equal(body.toString(), '{"user_id":3}');
    assert.deepEqual(payload, { user_id: 3 }); // no defaults written into the caller's object
    assert.match(properties.messageId, /^[0-9a-f-]{36}$/);
    assert.deepEqual({ ...properties, messageId: undefined }, {
      contentType: "application/json",
      contentEncoding: "utf-8",
      deliveryMode: 2,
      messageId: undefined,
      type: "demo.export",
      timestamp: 1_700_000_000,
      headers: { [H.VERSION]: { "!": "int", value: 2 } },
      correlationId: "c",
      appId: "a",
    });
    assert.equal(outgoing(schemas, "demo.export", 1, payload, { messageId: "given" }).properties.messageId, "given");
  });

  it("refuses, naming the reason: unknown type or version, not JSON, too large, schema violation", () => {
    assert.equal(refused(() => outgoing(schemas, "nope", 1, {})).reason, "unknown-type");
    assert.equal(refused(() => outgoing(schemas, "demo.export", 9, {})).reason, "unknown-version");
    assert.equal(refused(() => outgoing(schemas, "demo.export", 1.5, {})).reason, "unknown-version");
    assert.equal(refused(() => outgoing(schemas, "demo.export", 1, undefined)).reason, "invalid-json");
    const big = refused(() => outgoing(schemas, "demo.export", 1, { user_id: 1, pad: "x".repeat(100) }, { maxSize: 64 }));
    assert.equal(big.reason, "too-large");
    assert.match(big.message, /body is \d+ bytes, over the limit of 64$/);
    const bad = refused(() => outgoing(schemas, "demo.export", 1, { user_id: "1" }));
    assert.equal(bad.reason, "schema-violation");
    assert.equal(bad.message, "not published: demo.export v1: body/user_id must be integer");
  });
});
