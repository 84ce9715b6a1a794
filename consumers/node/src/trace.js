// W3C Trace Context (version 00) on leveret messages: one `traceparent`
// header carries a trace across languages (docs/contract.md, "Trace
// context"). Pure: the worker and the publisher decide with these functions
// which header a message they send carries.
//
//   traceparent = 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>
//
// A delivery without a valid traceparent is never an error: it starts a new
// trace, which its follow-ups continue.

import { randomBytes } from "node:crypto";

export const TRACEPARENT = "traceparent";
export const TRACESTATE = "tracestate";
/** The flags of a trace that starts here: sampled. */
export const NEW_TRACE_FLAGS = "01";

const FORMAT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
const ZEROS = /^0+$/;

/**
 * The trace context a `traceparent` value names, `{traceId, parentId, flags}`,
 * or null when it is not one: not version 00, not lowercase hex of the right
 * lengths, or an all-zero trace-id or parent-id. amqplib hands a long string
 * header over as a string, a byte array as a Buffer: either is read.
 */
export function parseTraceparent(value) {
  const text = Buffer.isBuffer(value) ? value.toString("latin1") : value;
  if (typeof text !== "string") return null;
  const match = FORMAT.exec(text);
  if (!match) return null;
  const [, traceId, parentId, flags] = match;
  if (ZEROS.test(traceId) || ZEROS.test(parentId)) return null;
  return { traceId, parentId, flags };
}

/** The header value of a trace context. */
export function formatTraceparent({ traceId, parentId, flags }) {
  return `00-${traceId}-${parentId}-${flags}`;
}

/** `bytes` random bytes as lowercase hex, never all zeros (which the format forbids). */
function randomHex(bytes) {
  for (;;) {
    const hex = randomBytes(bytes).toString("hex");
    if (!ZEROS.test(hex)) return hex;
  }
}

/** A new trace: random trace-id and parent-id, sampled. */
export function newTrace() {
  return { traceId: randomHex(16), parentId: randomHex(8), flags: NEW_TRACE_FLAGS };
}

/** A message sent on behalf of `parent`: the same trace and flags, a parent-id of its own. */
export function childOf(parent) {
  return { traceId: parent.traceId, parentId: randomHex(8), flags: parent.flags };
}

/**
 * The trace a message with these headers belongs to: `{context, tracestate}`.
 * Without a valid traceparent it is a new trace, and a tracestate that came
 * with the invalid one is not carried into it.
 */
export function traceOf(headers = {}) {
  const context = parseTraceparent(headers?.[TRACEPARENT]);
  if (context === null) return { context: newTrace(), tracestate: undefined };
  const state = headers[TRACESTATE];
  const tracestate = Buffer.isBuffer(state) ? state.toString("latin1") : state;
  return { context, tracestate: typeof tracestate === "string" ? tracestate : undefined };
}

/**
 * The trace headers of a message sent on behalf of `trace` (from traceOf): a
 * child traceparent, and the tracestate unchanged when there is one.
 */
export function followUpHeaders(trace) {
  const headers = { [TRACEPARENT]: formatTraceparent(childOf(trace.context)) };
  if (trace.tracestate !== undefined) headers[TRACESTATE] = trace.tracestate;
  return headers;
}

/**
 * The trace headers of a message published outside any handler: a new trace,
 * unless the caller's headers carry a valid traceparent, which is then the parent.
 */
export function publishTraceHeaders(callerHeaders = {}) {
  const given = parseTraceparent(callerHeaders?.[TRACEPARENT]);
  if (given === null) return { [TRACEPARENT]: formatTraceparent(newTrace()) };
  return followUpHeaders(traceOf(callerHeaders));
}
