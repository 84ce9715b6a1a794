// Publishing tasks from an application (an Express app, a script), as
// docs/contract.md §3 says: validate against the schema, send nothing that is
// invalid or too large, publish persistent and mandatory on a confirm channel,
// and resolve only on the broker's ack. One connection and one confirm channel
// per Publisher; concurrent publishes pipeline their confirms on it.

import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import amqp from "amqplib";
import { DEFAULTS, DEFAULT_SCHEMAS, redact, scrub } from "./config.js";
import { AccessRefused, ChannelLost, ConfirmPublisher, ExchangeMissing, NotConfirmed, PublishError } from "./confirm.js";
import { logger } from "./log.js";
import { Schemas } from "./schemas.js";
import { publishTraceHeaders } from "./trace.js";
import { DEFAULT_MAX_SIZE, MessageError, outgoing } from "./wire.js";

/** How long a publish keeps reconnecting before it reports the broker unavailable (as leveret's Python publishers). */
export const RECONNECT_TIMEOUT_MS = 30_000;
/** How long a publish waits for the broker on an open connection: the exchange check and the confirm. */
export const CONFIRM_TIMEOUT_MS = 30_000;
const CONNECT_TIMEOUT_MS = 10_000;

/** The broker stayed unreachable, or refused the credentials or the virtual host. */
export class BrokerUnavailable extends PublishError {
  name = "BrokerUnavailable";
}

/**
 * Publishes leveret messages with confirms.
 *
 *   const publisher = await Publisher.connect({ appId: "web" });
 *   const id = await publisher.publish("demo.export", 2, { user_id: 7 }, { exchange: "leveret.demo", routingKey: "export" });
 *   await publisher.close();
 *
 * Errors: a MessageError (src/wire.js; `reason` is `unknown-type`,
 * `unknown-version`, `schema-violation`, `too-large` or `invalid-json`) means
 * the message was refused before anything was sent. A PublishError
 * (src/confirm.js) means the broker did not take it: Unroutable,
 * NotConfirmed, ExchangeMissing, AccessRefused, BrokerUnavailable. No error
 * message carries the URL's password.
 */
export class Publisher {
  #url;
  #schemas;
  #log;
  #name;
  #session = null; // {conn, channel, confirm, exchanges, lost, blocked}
  #connecting = null;
  #inflight = new Set();
  #closed = false;
  #closing = null;

  /**
   * @param options.url        broker URL; default LEVERET_URL, else amqp://localhost:5672/
   * @param options.schemas    a Schemas instance or a folder; default LEVERET_SCHEMAS, else the repository's schemas/
   * @param options.appId      the `app_id` property of every message (optional)
   * @param options.maxSize    the largest body, in bytes (1 MiB)
   * @param options.reconnectTimeoutMs  how long a publish keeps reconnecting after a lost connection (30 s)
   * @param options.confirmTimeoutMs    how long a publish waits for the broker once connected (exchange check, confirm) (30 s)
   * @param options.log        {info, warn, error}(event, fields); default JSON lines on stderr; null: silent
   */
  constructor({
    url = process.env.LEVERET_URL || DEFAULTS.url,
    schemas = process.env.LEVERET_SCHEMAS || DEFAULT_SCHEMAS,
    appId,
    maxSize = DEFAULT_MAX_SIZE,
    reconnectTimeoutMs = RECONNECT_TIMEOUT_MS,
    confirmTimeoutMs = CONFIRM_TIMEOUT_MS,
    log = logger,
  } = {}) {
    if (typeof url !== "string" || !/^amqps?:\/\//i.test(url)) {
      throw new TypeError(`the broker URL must be an amqp:// or amqps:// URL, got ${typeof url === "string" ? redact(url) : typeof url}`);
    }
    this.#url = url;
    this.#schemas = schemas instanceof Schemas ? schemas : Schemas.load(schemas);
    this.appId = appId;
    this.maxSize = maxSize;
    this.reconnectTimeoutMs = reconnectTimeoutMs;
    this.confirmTimeoutMs = confirmTimeoutMs;
    this.#log = log ?? { info() {}, warn() {}, error() {} };
    this.#name = `leveret-node-publisher ${hostname()}:${process.pid}${appId ? ` ${appId}` : ""}`;
  }

  /** A Publisher with its connection open (retried for reconnectTimeoutMs); takes the constructor's options. */
  static async connect(options) {
    const publisher = new Publisher(options);
    await publisher.#retrying("cannot connect", () => {});
    return publisher;
  }

  /** The broker URL with its password masked. */
  get url() {
    return redact(this.#url);
  }

  /**
   * Validate, publish, and wait for the broker's confirm.
   *
   * @param type     the message type, e.g. "demo.export"
   * @param version  its schema version, an integer
   * @param payload  the body: a JSON-serialisable object, valid against schemas/<type>.v<version>.json
   * @param options.exchange, options.routingKey  where it goes (both required; "" is the default exchange)
   * @param options.messageId      default: a new UUID. Pass the same one to publish the same task again
   * @param options.correlationId  ties the task to a request or a job
   * @param options.headers        application headers (`leveret-` ones are dropped). A valid
   *   `traceparent` among them is the parent of the message's own; without one the message starts a new trace
   * @returns the message id, once the broker confirmed the message
   */
  async publish(type, version, payload, options = {}) {
    return this.#send(this.#prepare(type, version, payload, options));
  }

  /**
   * Publish several messages at once, their confirms pipelined. Every message
   * is checked first: if one is invalid, nothing is sent. Resolves with the
   * message ids in order; if any is not confirmed, rejects with an
   * AggregateError whose `results` say, for each message, its `messageId` and
   * its `error` (absent when confirmed).
   *
   * @param messages [{type, version, payload, exchange, routingKey, messageId?, correlationId?, headers?}]
   */
  async publishMany(messages) {
    const prepared = messages.map(({ type, version, payload, ...options }, i) => {
      try {
        return this.#prepare(type, version, payload, options);
      } catch (err) {
        err.message = `message ${i}: ${err.message}`;
        throw err;
      }
    });
    const settled = await Promise.allSettled(prepared.map((message) => this.#send(message)));
    const results = settled.map((r, i) => ({
      messageId: prepared[i].properties.messageId,
      ...(r.status === "rejected" && { error: r.reason }),
    }));
    const failed = results.filter((r) => r.error);
    if (failed.length === 0) return results.map((r) => r.messageId);
    const err = new AggregateError(
      failed.map((r) => r.error),
      `${failed.length} of ${messages.length} messages not published; first: ${failed[0].error.message}`,
    );
    err.results = results;
    throw err;
  }

  /**
   * Wait for the publishes in flight, then close the channel and the
   * connection. Later publishes are refused.
   */
  close() {
    this.#closed = true;
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#inflight]);
      await this.#connecting?.catch(() => {});
      const session = this.#session;
      this.#session = null;
      if (session && !session.lost) {
        session.lost = true;
        await shutDown(session);
      }
    })();
    return this.#closing;
  }

  // --- building the message ---------------------------------------------------

  #prepare(type, version, payload, { exchange, routingKey, messageId, correlationId, headers } = {}) {
    if (typeof exchange !== "string" || typeof routingKey !== "string") {
      throw new TypeError(`publish ${type} v${version}: pass { exchange, routingKey } (strings; "" is the default exchange)`);
    }
    if (messageId !== undefined && (typeof messageId !== "string" || messageId === "")) {
      throw new TypeError("publish: messageId must be a non-empty string");
    }
    const trace = publishTraceHeaders(headers);
    const options = { maxSize: this.maxSize, messageId, correlationId, appId: this.appId, headers, trace };
    return { exchange, routingKey, ...outgoing(this.#schemas, type, version, payload, options) };
  }

  // --- sending -----------------------------------------------------------------

  async #send({ exchange, routingKey, body, properties }) {
    const { messageId, type } = properties;
    const task = this.#retrying(`message ${messageId} (${type}) not published`, (session) =>
      this.#confirmed(session, exchange, routingKey, body, properties),
    );
    this.#inflight.add(task);
    try {
      await task;
    } finally {
      this.#inflight.delete(task);
    }
    return messageId;
  }

  /**
   * Run `action` on an open session. After a lost connection, reconnect and
   * run it again (the same message id, so a duplicate at worst, never a
   * loss), until reconnectTimeoutMs runs out.
   */
  async #retrying(what, action) {
    const deadline = performance.now() + this.reconnectTimeoutMs;
    let delay = 100;
    for (;;) {
      if (this.#closed) throw new PublishError(`${what}: the publisher is closed`);
      let session = null;
      try {
        session = await this.#connected();
        return await action(session);
      } catch (err) {
        const fatal = this.#fatal(err, session);
        if (fatal) throw fatal;
        if (session) this.#drop(session);
        const text = this.#text(err);
        if (this.#closed) throw new PublishError(`${what}: the publisher was closed (${text})`);
        if (performance.now() + delay > deadline) {
          throw new BrokerUnavailable(
            `${what}: no RabbitMQ broker reachable at ${redact(this.#url)}` +
              `${this.reconnectTimeoutMs > 0 ? ` within ${this.reconnectTimeoutMs / 1000} s` : ""} (${text})`,
          );
        }
        this.#log.warn("publisher.reconnecting", { error: text, retry_in_ms: delay });
        await sleep(delay);
        delay = Math.min(delay * 2, 2000);
      }
    }
  }

  /** The error to give the caller, or null when a new connection may help. */
  #fatal(err, session) {
    if (err instanceof ChannelLost) return null;
    if (err instanceof PublishError || err instanceof MessageError) return err;
    const text = this.#text(err);
    if (session === null) {
      // amqp.connect failed: only a refusal is final.
      if (/ACCESS.REFUSED/.test(text)) return new BrokerUnavailable(`the broker at ${redact(this.#url)} refused the credentials: ${text}`);
      if (/Expected ConnectionOpenOk|NOT.ALLOWED/.test(text)) {
        return new BrokerUnavailable(`the broker at ${redact(this.#url)} refused the virtual host (missing, or no permission): ${text}`);
      }
      return null;
    }
    if (session.lost) return null;
    return new PublishError(text);
  }

  #text(err) {
    return scrub(err?.message ?? String(err), this.#url);
  }

  #connected() {
    if (this.#session && !this.#session.lost) return Promise.resolve(this.#session);
    this.#connecting ??= this.#open().finally(() => {
      this.#connecting = null;
    });
    return this.#connecting;
  }

  async #open() {
    const conn = await amqp.connect(this.#url, {
      clientProperties: { connection_name: this.#name },
      timeout: CONNECT_TIMEOUT_MS,
    });
    const session = { conn, channel: null, confirm: null, exchanges: new Map(), lost: false, blocked: null };
    conn.on("error", (err) => this.#log.warn("publisher.connection_error", { error: this.#text(err) }));
    conn.on("close", () => this.#drop(session));
    conn.on("blocked", (reason) => {
      session.blocked = reason;
      this.#log.warn("publisher.blocked", { reason });
    });
    conn.on("unblocked", () => {
      session.blocked = null;
    });
    try {
      const channel = await conn.createConfirmChannel();
      session.channel = channel;
      session.confirm = new ConfirmPublisher(channel);
      // Closed by the broker (a 404, a 403): start afresh on the next publish.
      channel.on("close", () => this.#drop(session));
    } catch (err) {
      await conn.close().catch(() => {});
      throw err;
    }
    if (this.#closed) {
      await conn.close().catch(() => {});
      throw new PublishError("the publisher is closed");
    }
    this.#session = session;
    return session;
  }

  /** Forget a session that failed, and close what is left of it. */
  #drop(session) {
    if (this.#session === session) this.#session = null;
    if (session.lost) return;
    session.lost = true;
    session.conn.close().catch(() => {});
  }

  /**
   * A passive declare of the exchange, once per connection (the contract
   * allows it): a missing exchange then fails only its own publishes, where a
   * publish to it would close the shared confirm channel under every publish
   * in flight. Needs no permission besides the publisher's.
   */
  #checkExchange(session, exchange) {
    if (exchange === "") return undefined; // the default exchange always exists
    let known = session.exchanges.get(exchange);
    if (!known) {
      known = (async () => {
        const ch = await session.conn.createChannel();
        ch.on("error", () => {}); // a 404 closes this channel; the rejection says why
        try {
          await ch.checkExchange(exchange);
        } catch (err) {
          if (err?.code === 404) throw new ExchangeMissing(`exchange '${exchange}' does not exist; run \`leveret topology apply\``);
          if (err?.code === 403) throw new AccessRefused(`access to exchange '${exchange}' refused: ${this.#text(err)}`);
          throw err;
        }
        ch.close().catch(() => {}); // not awaited: amqplib never settles it if the connection dies meanwhile
      })();
      session.exchanges.set(exchange, known);
      known.catch(() => session.exchanges.delete(exchange));
    }
    return known;
  }

  /**
   * Check the exchange, publish on the session's confirm channel and wait for
   * the confirm; fail if that takes over confirmTimeoutMs (a broker blocking
   * publishers, a connection that went silent). A silent connection is
   * dropped then: the publishes still in flight on it go again on a new one.
   */
  async #confirmed(session, exchange, routingKey, body, properties) {
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => {
        if (!session.blocked) this.#drop(session);
        const blocked = session.blocked ? ` (the broker is blocking publishers: ${session.blocked})` : "";
        reject(
          new NotConfirmed(
            `no confirm for message ${properties.messageId} within ${this.confirmTimeoutMs / 1000} s${blocked}; ` +
              "the broker may or may not have it: publish it again with the same message id",
          ),
        );
      }, this.confirmTimeoutMs);
    });
    const publish = async () => {
      await this.#checkExchange(session, exchange);
      await session.confirm.publish(exchange, routingKey, body, properties);
    };
    try {
      await Promise.race([publish(), late]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * Close the channel, then the connection (so the broker has the frames
 * queued on the channel first). amqplib never settles a close whose
 * connection dies on the way: wait for the connection's end, or 5 s, at most.
 */
async function shutDown({ conn, channel, confirm }, ms = 5000) {
  let timer;
  const gone = new Promise((resolve) => {
    conn.once("close", resolve);
    timer = setTimeout(resolve, ms);
  });
  if (!confirm.closed) await Promise.race([channel.close().catch(() => {}), gone]);
  await Promise.race([conn.close().catch(() => {}), gone]);
  clearTimeout(timer);
}

// --- the demo's task ----------------------------------------------------------

/** The demo's exchange and the routing key of its export tasks (leveret/demo.py). */
export const DEMO_EXCHANGE = "leveret.demo";
export const EXPORT_ROUTING_KEY = "export";

/**
 * Publish a demo.export v2 task: a user asked for an export of their report.
 * The typed face of `publish` for one message type, as TaskPublisher.publish_export_task
 * is in Ruby and ExportRequestedV2 in Python; write one like it per task type.
 *
 * @param publisher  a Publisher
 * @param userId     the user (an integer >= 1)
 * @param format     "csv" or "xlsx"
 * @param options.columns  the columns to export (v2), or null for all
 * @param options.exchange defaults to leveret.demo; also messageId, correlationId, headers
 * @returns the message id, the task's idempotency key
 */
export function publishExportTask(publisher, userId, format = "csv", { columns, exchange = DEMO_EXCHANGE, ...options } = {}) {
  const payload = { user_id: userId, format };
  if (columns != null) payload.columns = columns;
  return publisher.publish("demo.export", 2, payload, { ...options, exchange, routingKey: EXPORT_ROUTING_KEY });
}

export { AccessRefused, ExchangeMissing, NotConfirmed, PublishError, Unroutable } from "./confirm.js";
