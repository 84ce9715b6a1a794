// Unit tests of W3C trace context on messages: reading a traceparent, a new
// trace, a child, and which trace headers a delivery's follow-ups, its copies
// and a publisher's messages carry.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_SCHEMAS } from "../src/config.js";
import { Schemas } from "../src/schemas.js";
import {
  TRACEPARENT,
  TRACESTATE,
  childOf,
  followUpHeaders,
  formatTraceparent,
  newTrace,
  parseTraceparent,
  publishTraceHeaders,
  traceOf,
} from "../src/trace.js";
import { H, failure, outgoing, toDelivery } from "../src/wire.js";

const TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID = "00f067aa0ba902b7";
const GIVEN = `00-${TRACE_ID}-${PARENT_ID}-01`;
const VALID = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

describe("parseTraceparent", () => {
  it("reads version 00: trace-id, parent-id, flags", () => {
    assert.deepEqual(parseTraceparent(GIVEN), { traceId: TRACE_ID, parentId: PARENT_ID, flags: "01" });
    assert.deepEqual(parseTraceparent(`00-${TRACE_ID}-${PARENT_ID}-00`)?.flags, "00");
    assert.equal(formatTraceparent(parseTraceparent(GIVEN)), GIVEN);
  });

  it("reads a byte-array header as well as a string", () => {
    assert.equal(parseTraceparent(Buffer.from(GIVEN))?.traceId, TRACE_ID);
  });

  it("refuses anything else", () => {
    const invalid = [
      undefined,
      null,
      42,
      "",
      `01-${TRACE_ID}-${PARENT_ID}-01`, // another version
      `ff-${TRACE_ID}-${PARENT_ID}-01`,
      `00-${TRACE_ID.toUpperCase()}-${PARENT_ID}-01`, // upper case
      `00-${TRACE_ID.slice(1)}-${PARENT_ID}-01`, // short trace-id
      `00-${TRACE_ID}-${PARENT_ID}0-01`, // long parent-id
      `00-${TRACE_ID}-${PARENT_ID}-1`,
      `00-${TRACE_ID}-${PARENT_ID}-01-extra`,
      ` ${GIVEN}`,
      `${GIVEN}\n`,
      `00-${"0".repeat(32)}-${PARENT_ID}-01`, // all-zero trace-id
      `00-${TRACE_ID}-${"0".repeat(16)}-01`, // all-zero parent-id
      `00-${TRACE_ID.replace("4", "g")}-${PARENT_ID}-01`,
    ];
    for (const value of invalid) assert.equal(parseTraceparent(value), null, JSON.stringify(value));
  });
});

describe("a new trace and a child", () => {
  it("a new trace: random ids, flags 01, a valid header", () => {
    const a = newTrace();
    const b = newTrace();
    assert.equal(a.flags, "01");
    assert.match(formatTraceparent(a), VALID);
    assert.notEqual(parseTraceparent(formatTraceparent(a)), null);
    assert.notEqual(a.traceId, b.traceId);
    assert.notEqual(a.parentId, b.parentId);
  });

  it("a child: the same trace-id and flags, a parent-id of its own", () => {
    const parent = parseTraceparent(`00-${TRACE_ID}-${PARENT_ID}-00`);
    const child = childOf(parent);
    assert.equal(child.traceId, TRACE_ID);
    assert.equal(child.flags, "00");
    assert.notEqual(child.parentId, PARENT_ID);
    assert.notEqual(parseTraceparent(formatTraceparent(child)), null);
    assert.notEqual(childOf(parent).parentId, child.parentId);
  });
});

describe("the trace of a delivery", () => {
  it("its own traceparent and tracestate", () => {
    const trace = traceOf({ [TRACEPARENT]: GIVEN, [TRACESTATE]: "congo=t61rcWkgMzE" });
    assert.deepEqual(trace, { context: parseTraceparent(GIVEN), tracestate: "congo=t61rcWkgMzE" });
  });

  it("none, or an invalid one, starts a new trace, without the tracestate", () => {
    for (const headers of [undefined, {}, { [TRACEPARENT]: "garbage", [TRACESTATE]: "congo=1" }]) {
      const trace = traceOf(headers);
      assert.equal(trace.context.flags, "01");
      assert.notEqual(trace.context.traceId, TRACE_ID);
      assert.equal(trace.tracestate, undefined);
    }
  });

  it("follow-ups continue it: same trace-id and flags, new parent-id, tracestate unchanged", () => {
    const trace = traceOf({ [TRACEPARENT]: GIVEN, [TRACESTATE]: "congo=t61rcWkgMzE" });
    const a = followUpHeaders(trace);
    const b = followUpHeaders(trace);
    assert.equal(a[TRACESTATE], "congo=t61rcWkgMzE");
    for (const headers of [a, b]) {
      const sent = parseTraceparent(headers[TRACEPARENT]);
      assert.equal(sent.traceId, TRACE_ID);
      assert.equal(sent.flags, "01");
      assert.notEqual(sent.parentId, PARENT_ID);
    }
    assert.notEqual(a[TRACEPARENT], b[TRACEPARENT]);
  });

  it("a delivery without one: its follow-ups all continue the one new trace", () => {
    const trace = traceOf({});
    const ids = new Set([1, 2, 3].map(() => parseTraceparent(followUpHeaders(trace)[TRACEPARENT]).traceId));
    assert.deepEqual([...ids], [trace.context.traceId]);
    assert.deepEqual(Object.keys(followUpHeaders(trace)), [TRACEPARENT]);
  });

  it("toDelivery reads it once; the copy of a failed delivery keeps the headers unchanged", () => {
    const headers = { [H.VERSION]: 1, [TRACEPARENT]: GIVEN, [TRACESTATE]: "congo=1" };
    const delivery = toDelivery({ content: Buffer.from("{}"), fields: {}, properties: { messageId: "m-1", headers } });
    assert.equal(delivery.trace.context.traceId, TRACE_ID);
    const copy = failure(delivery, "jobs", new Error("boom"), { consumer: "jobs@host:1" });
    assert.equal(copy.headers[TRACEPARENT], GIVEN);
    assert.equal(copy.headers[TRACESTATE], "congo=1");
    // A delivery without one gets no traceparent in its copy: the copy is the message, not a follow-up.
    const bare = toDelivery({ content: Buffer.from("{}"), fields: {}, properties: { headers: { [H.VERSION]: 1 } } });
    assert.equal(failure(bare, "jobs", new Error("boom"), { consumer: "c" }).headers[TRACEPARENT], undefined);
  });
});

describe("a message published outside a handler", () => {
  it("starts a new trace", () => {
    const headers = publishTraceHeaders({ tenant: "a" });
    assert.deepEqual(Object.keys(headers), [TRACEPARENT]);
    assert.equal(parseTraceparent(headers[TRACEPARENT]).flags, "01");
    assert.notEqual(publishTraceHeaders()[TRACEPARENT], headers[TRACEPARENT]);
  });

  it("continues the caller's traceparent as its parent", () => {
    const headers = publishTraceHeaders({ [TRACEPARENT]: GIVEN, [TRACESTATE]: "congo=1" });
    const sent = parseTraceparent(headers[TRACEPARENT]);
    assert.equal(sent.traceId, TRACE_ID);
    assert.notEqual(sent.parentId, PARENT_ID);
    assert.equal(headers[TRACESTATE], "congo=1");
  });

  it("replaces an invalid one with a new trace", () => {
    const headers = publishTraceHeaders({ [TRACEPARENT]: `00-${"0".repeat(32)}-${PARENT_ID}-01`, [TRACESTATE]: "x=1" });
    assert.notEqual(parseTraceparent(headers[TRACEPARENT]), null);
    assert.equal(headers[TRACESTATE], undefined);
  });

  it("outgoing puts the trace headers in place of the caller's", () => {
    const schemas = Schemas.load(DEFAULT_SCHEMAS);
    const callerHeaders = { [TRACEPARENT]: "garbage", [TRACESTATE]: "x=1", tenant: "a" };
    const trace = publishTraceHeaders(callerHeaders);
    const { properties } = outgoing(schemas, "demo.export", 1, { user_id: 1 }, { headers: callerHeaders, trace });
    assert.deepEqual(Object.keys(properties.headers).sort(), ["leveret-version", "tenant", "traceparent"]);
    assert.equal(properties.headers[TRACEPARENT], trace[TRACEPARENT]);
    // Without trace headers the caller's are left as they are.
    const plain = outgoing(schemas, "demo.export", 1, { user_id: 1 }, { headers: { [TRACEPARENT]: GIVEN } });
    assert.equal(plain.properties.headers[TRACEPARENT], GIVEN);
  });
});
