// The wire format and the pure decisions of docs/contract.md: reading a
// delivery, checking it (steps 1-5), building the copy of a failed one
// (step 8), and building a new message (§3). Nothing here does I/O or
// imports amqplib, so it is unit-tested on plain objects; src/worker.js and
// src/publisher.js perform what these functions decide.

import { randomUUID } from "node:crypto";
import { TRACEPARENT, TRACESTATE, traceOf } from "./trace.js";

export const CONTENT_TYPE = "application/json";
export const CONTENT_ENCODING = "utf-8";
export const DEFAULT_MAX_SIZE = 1024 * 1024;

export const H = Object.freeze({
  VERSION: "leveret-version",
  RETRY_COUNT: "leveret-retry-count",
  REASON: "leveret-reason",
  ERROR_TYPE: "leveret-error-type",
  ERROR_MESSAGE: "leveret-error-message",
  ERROR_TRACEBACK: "leveret-error-traceback",
  FIRST_FAILED_AT: "leveret-first-failed-at",
  LAST_FAILED_AT: "leveret-last-failed-at",
  FAILED_BY: "leveret-failed-by",
  FAILED_QUEUE: "leveret-failed-queue",
  ORIGINAL_EXCHANGE: "leveret-original-exchange",
  ORIGINAL_ROUTING_KEY: "leveret-original-routing-key",
  DROPPED_HEADERS: "leveret-dropped-headers",
});

export const HANDLER_ERROR = "handler-error";
export const DEAD_LETTER = "dead-letter";

export const MAX_ERROR_MESSAGE = 1024;
export const MAX_TRACEBACK = 4096;
export const MAX_HEADER_VALUE = 1024;
// The header table of a copy must fit in one frame. amqplib also encodes a
// headers table into a 64 KiB scratch buffer, so this budget is a hard limit.
export const MAX_HEADERS = 64 * 1024;
const TRUNCATED = "…[truncated]";

export const retryExchange = (queue) => `${queue}.retry`;
export const deadExchange = (queue) => `${queue}.dead`;
export const deadLetterQueue = (queue) => `${queue}.dlq`;

// --- errors -------------------------------------------------------------------

const ERROR_NAMES = {
  "too-large": "MessageTooLarge",
  "invalid-content-type": "InvalidContentType",
  "invalid-json": "DecodeError",
  "unknown-type": "UnknownMessageType",
  "unknown-version": "UnknownVersion",
  "schema-violation": "SchemaViolation",
};

/** A message that can never succeed as it is (steps 1-5): a permanent failure. */
export class MessageError extends Error {
  constructor(reason, message) {
    super(message);
    this.reason = reason;
    this.name = ERROR_NAMES[reason] ?? "MessageError";
  }
}

/** Thrown by a handler that gives up on purpose: permanent, reason `dead-letter`. */
export class DeadLetter extends Error {
  name = "DeadLetter";
}

/** A handler that ran past its timeout: transient, like any handler error. */
export class HandlerTimeout extends Error {
  name = "TimeoutError";
}

// --- integers on the wire -----------------------------------------------------

/**
 * An AMQP integer field for amqplib. A plain JS number is encoded as the
 * smallest signed type that holds it (1 becomes a signed byte), or as a
 * double if it has a fraction; this pins a signed 32-bit `I` (a 64-bit `l`
 * beyond that), the type Python's pika writes.
 */
export function amqpInt(n) {
  if (!Number.isSafeInteger(n)) throw new TypeError(`not an integer: ${n}`);
  return { "!": n >= -0x80000000 && n < 0x80000000 ? "int" : "long", value: n };
}

/** The value of an integer header as amqplib decodes it, or null. */
export function integerHeader(value) {
  // amqplib decodes every integer type (b B s u I i l) to a JS number, and
  // booleans to booleans, timestamps and decimals to objects.
  return typeof value === "number" && Number.isSafeInteger(value) ? value : null;
}

// --- reading a delivery -------------------------------------------------------

/**
 * A client-neutral view of an amqplib message ({content, fields, properties}).
 * `trace` is the trace the delivery belongs to (src/trace.js): its own, or a
 * new one when it has no valid traceparent. Read once, so that every message
 * sent for the delivery continues the same trace.
 */
export function toDelivery(msg) {
  const props = msg.properties ?? {};
  const headers = props.headers ?? {};
  const retryCount = integerHeader(headers[H.RETRY_COUNT]) ?? 0;
  return {
    body: msg.content,
    exchange: msg.fields?.exchange ?? "",
    routingKey: msg.fields?.routingKey ?? "",
    redelivered: Boolean(msg.fields?.redelivered),
    properties: props,
    headers,
    messageId: props.messageId ?? null,
    type: props.type ?? null,
    contentType: props.contentType ?? null,
    version: integerHeader(headers[H.VERSION]),
    retryCount,
    attempt: retryCount + 1,
    trace: traceOf(headers),
  };
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/**
 * Steps 1-5 of the contract, in order: size, content type, type, version,
 * UTF-8 JSON, schema. Returns `{handler, version, payload}` or throws a
 * MessageError naming the reason.
 *
 * @param delivery from toDelivery
 * @param handlers Map of type -> {versions: Set<number>, ...}
 * @param validate (type, version, value) -> null when valid, else a message
 * @param maxSize the largest body accepted, in bytes
 */
export function resolve(delivery, { handlers, validate, maxSize = DEFAULT_MAX_SIZE }) {
  const { body, type, version } = delivery;
  if (body.length > maxSize) {
    throw new MessageError("too-large", `body is ${body.length} bytes, over the limit of ${maxSize}`);
  }
  const mediaType = (delivery.contentType ?? "").split(";", 1)[0].trim().toLowerCase();
  if (mediaType !== CONTENT_TYPE) {
    throw new MessageError(
      "invalid-content-type",
      `content type ${JSON.stringify(delivery.contentType)} is not '${CONTENT_TYPE}'`,
    );
  }
  if (!type) throw new MessageError("unknown-type", "message has no type property");
  const handler = handlers.get(type);
  if (!handler) throw new MessageError("unknown-type", `no handler for message type '${type}'`);
  if (version === null) {
    throw new MessageError("unknown-version", `${type}: missing or non-integer ${H.VERSION} header`);
  }
  if (!handler.versions.has(version)) {
    const accepted = [...handler.versions].sort((a, b) => a - b).join(", ");
    throw new MessageError("unknown-version", `${type} v${version} is not handled (accepted: ${accepted})`);
  }
  let payload;
  try {
    payload = JSON.parse(utf8.decode(body));
  } catch (err) {
    throw new MessageError("invalid-json", `body is not UTF-8 JSON: ${err.message}`);
  }
  const problem = validate(type, version, payload);
  if (problem) throw new MessageError("schema-violation", `${type} v${version}: ${problem}`);
  return { handler, version, payload };
}

// --- the copy of a failed delivery --------------------------------------------

/** ISO 8601 UTC with milliseconds, as leveret writes it: 2026-01-02T03:04:05.123+00:00 */
export function isoUtc(date = new Date()) {
  return date.toISOString().replace(/Z$/, "+00:00");
}

function errorName(err) {
  if (err instanceof Error) return err.name || err.constructor?.name || "Error";
  return err === null ? "null" : typeof err;
}

function errorText(err) {
  const text = err instanceof Error ? err.message : String(err);
  return text || errorName(err);
}

/**
 * Decide where a failed delivery goes and build its copy (step 8).
 *
 * @returns {{exchange, routingKey, headers, properties, permanent, outcome, reason, error}}
 *   `properties` are amqplib publish options.
 */
export function failure(delivery, queue, err, { consumer, now = new Date() }) {
  const stamp = isoUtc(now);
  const permanent = err instanceof MessageError || err instanceof DeadLetter;
  const reason = err instanceof MessageError ? err.reason : err instanceof DeadLetter ? DEAD_LETTER : HANDLER_ERROR;
  const message = truncate(errorText(err), MAX_ERROR_MESSAGE);

  // x- headers belong to the broker (x-death and friends): the copy carries none.
  const headers = {};
  for (const [name, value] of Object.entries(delivery.headers)) {
    if (!name.startsWith("x-")) headers[name] = value;
  }
  if (delivery.version !== null) headers[H.VERSION] = amqpInt(delivery.version);
  Object.assign(headers, {
    [H.RETRY_COUNT]: amqpInt(delivery.retryCount + 1),
    [H.REASON]: reason,
    [H.ERROR_TYPE]: truncate(errorName(err), MAX_HEADER_VALUE),
    [H.ERROR_MESSAGE]: message,
    [H.LAST_FAILED_AT]: stamp,
    [H.FAILED_BY]: truncate(consumer, MAX_HEADER_VALUE),
    [H.FAILED_QUEUE]: queue,
  });
  setDefault(headers, H.FIRST_FAILED_AT, stamp);
  setDefault(headers, H.ORIGINAL_EXCHANGE, delivery.exchange);
  setDefault(headers, H.ORIGINAL_ROUTING_KEY, delivery.routingKey);
  if (!permanent && err instanceof Error && err.stack) {
    headers[H.ERROR_TRACEBACK] = truncate(err.stack, MAX_TRACEBACK, "end");
  } else {
    delete headers[H.ERROR_TRACEBACK];
  }
  fit(headers, MAX_HEADERS);

  return {
    exchange: permanent ? deadExchange(queue) : retryExchange(queue),
    routingKey: "",
    headers,
    properties: copyProperties(delivery.properties, headers),
    permanent,
    // The broker decides between a tier and the DLQ from the count; without
    // the policy, a transient failure is "retry_scheduled" here.
    outcome: permanent ? "dead_lettered" : "retry_scheduled",
    reason,
    error: message,
  };
}

function setDefault(headers, name, value) {
  if (!Object.hasOwn(headers, name)) headers[name] = value;
}

/**
 * The properties of a copy, as amqplib publish options: the delivery's, minus
 * `expiration` (the tier's TTL decides) and `userId` (the broker checks it
 * against the republishing user), persistent, with the new headers.
 */
export function copyProperties(props, headers) {
  const options = {
    contentType: props.contentType,
    contentEncoding: props.contentEncoding,
    headers,
    deliveryMode: 2,
    priority: props.priority,
    correlationId: props.correlationId,
    replyTo: props.replyTo,
    messageId: props.messageId,
    timestamp: props.timestamp ?? Math.floor(Date.now() / 1000),
    type: props.type,
    appId: props.appId,
  };
  for (const key of Object.keys(options)) {
    if (options[key] === undefined || options[key] === null) delete options[key];
  }
  return options;
}

/**
 * Cut `text` to at most `limit` UTF-8 bytes, marking the cut. `keep` is
 * "start" (error messages) or "end" (stack traces, whose last lines say most).
 */
export function truncate(text, limit, keep = "start") {
  const data = Buffer.from(text, "utf8");
  if (data.length <= limit) return text;
  const room = limit - Buffer.byteLength(TRUNCATED);
  const continuation = (i) => i < data.length && (data[i] & 0xc0) === 0x80;
  if (keep === "end") {
    let start = data.length - room;
    while (continuation(start)) start++; // never start inside a character
    return TRUNCATED + data.subarray(start).toString("utf8");
  }
  let end = room;
  while (end > 0 && continuation(end)) end--; // never end inside a character
  return data.subarray(0, end).toString("utf8") + TRUNCATED;
}

/** An upper bound of the AMQP field-table encoding of a header value, in bytes. */
export function encodedSize(value) {
  if (typeof value === "string") return 4 + Buffer.byteLength(value, "utf8");
  if (Buffer.isBuffer(value)) return 4 + value.length;
  if (Array.isArray(value)) return 4 + value.reduce((n, v) => n + 1 + encodedSize(v), 0);
  if (value !== null && typeof value === "object" && !Object.hasOwn(value, "!")) {
    let n = 4;
    for (const [k, v] of Object.entries(value)) n += 1 + Buffer.byteLength(k) + 1 + encodedSize(v);
    return n;
  }
  return 9; // numbers, booleans, typed values (timestamps, decimals), void
}

/**
 * Shrink a header table in place until its encoded size is within `budget`:
 * the traceback goes first, then the largest application headers, named in
 * `leveret-dropped-headers`. leveret's own headers always stay.
 */
export function fit(headers, budget) {
  if (encodedSize(headers) <= budget) return;
  delete headers[H.ERROR_TRACEBACK];
  const bySize = Object.keys(headers)
    .filter((k) => !k.startsWith("leveret-"))
    .sort((a, b) => encodedSize({ [b]: headers[b] }) - encodedSize({ [a]: headers[a] }));
  const dropped = [];
  for (const name of bySize) {
    if (encodedSize(headers) <= budget) break;
    delete headers[name];
    dropped.push(name);
  }
  if (dropped.length) headers[H.DROPPED_HEADERS] = truncate(dropped.join(","), MAX_HEADER_VALUE);
}

// --- publishing ---------------------------------------------------------------

/**
 * amqplib publish options for a new message, with the contract's properties:
 * JSON in UTF-8, persistent, `type`, `message_id`, `timestamp` (seconds),
 * optional `correlation_id` and `app_id`, and `leveret-version` as an AMQP
 * integer. The caller's headers are kept except `leveret-` ones: the prefix
 * belongs to the contract, so a publisher cannot forge a retry count or a
 * failure reason (as leveret's Python publisher does). `trace`, the message's
 * trace headers (src/trace.js), replaces any traceparent and tracestate the
 * caller gave.
 */
export function publishProperties({ type, version, messageId, correlationId, appId, headers = {}, trace, now = Date.now() }) {
  const clean = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (name.startsWith("leveret-")) continue;
    if (trace && (name === TRACEPARENT || name === TRACESTATE)) continue;
    clean[name] = value;
  }
  if (trace) Object.assign(clean, trace);
  clean[H.VERSION] = amqpInt(version);
  const options = {
    contentType: CONTENT_TYPE,
    contentEncoding: CONTENT_ENCODING,
    deliveryMode: 2,
    messageId,
    type,
    timestamp: Math.floor(now / 1000),
    headers: clean,
  };
  if (correlationId) options.correlationId = correlationId;
  if (appId) options.appId = appId;
  return options;
}

/**
 * A new message, checked and ready to publish (docs/contract.md §3, steps 1
 * and 2): the UTF-8 JSON body and its amqplib publish options. Throws a
 * MessageError, and so sends nothing, for an unknown type or version, a
 * payload that is not JSON, a body over `maxSize`, or a schema violation.
 * What is validated is the body as a consumer will read it (a parsed copy:
 * the caller's object is left as it is, without the schema's defaults).
 *
 * @param schemas {has(type, version), versions(type), validate(type, version, value)}, as src/schemas.js
 * @param options.trace  the message's trace headers (src/trace.js: followUpHeaders, publishTraceHeaders)
 */
export function outgoing(schemas, type, version, payload, { maxSize = DEFAULT_MAX_SIZE, messageId, correlationId, appId, headers, trace, now } = {}) {
  if (typeof type !== "string" || type === "") throw new MessageError("unknown-type", "not published: no message type given");
  if (!Number.isInteger(version)) {
    throw new MessageError("unknown-version", `not published: ${type}: the version must be an integer, got ${JSON.stringify(version)}`);
  }
  const what = `${type} v${version}`;
  if (!schemas.has(type, version)) {
    const known = schemas.versions(type);
    if (known.length === 0) throw new MessageError("unknown-type", `not published: no schema for message type '${type}'`);
    throw new MessageError("unknown-version", `not published: no schema for ${what} (known versions: ${known.join(", ")})`);
  }
  let json;
  try {
    json = JSON.stringify(payload);
  } catch (err) {
    throw new MessageError("invalid-json", `not published: ${what}: the payload cannot be serialised as JSON: ${err.message}`);
  }
  if (json === undefined) throw new MessageError("invalid-json", `not published: ${what}: the payload is not a JSON value`);
  const body = Buffer.from(json, "utf8");
  if (body.length > maxSize) {
    throw new MessageError("too-large", `not published: ${what}: body is ${body.length} bytes, over the limit of ${maxSize}`);
  }
  const problem = schemas.validate(type, version, JSON.parse(json));
  if (problem) throw new MessageError("schema-violation", `not published: ${what}: ${problem}`);
  const properties = publishProperties({ type, version, messageId: messageId ?? randomUUID(), correlationId, appId, headers, trace, now });
  return { body, properties };
}
