// The consuming loop of docs/contract.md §4 with amqplib: passive checks,
// manual acks and a prefetch, settling each delivery (ack, or copy then ack,
// or reject without requeue), reconnecting, and a graceful shutdown.
// The decisions themselves are pure and live in wire.js.

import { writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import amqp from "amqplib";
import { redact, scrub } from "./config.js";
import { ConfirmPublisher, Nacked } from "./confirm.js";
import { Health, STALL_AFTER } from "./health.js";
import { logger } from "./log.js";
import { Metrics } from "./metrics.js";
import { monotonic } from "./probes.js";
import { STATUS_EXCHANGE, batchOf, report } from "./status.js";
import { followUpHeaders } from "./trace.js";
import {
  DEFAULT_MAX_SIZE,
  HandlerTimeout,
  deadExchange,
  deadLetterQueue,
  failure,
  outgoing,
  resolve,
  retryExchange,
  toDelivery,
} from "./wire.js";

/** Handlers default to 25 minutes: below RabbitMQ's consumer_timeout (30). */
export const DEFAULT_TIMEOUT_MS = 25 * 60 * 1000;
/** How often the worker asks the broker about its queue (a passive declare). */
export const CHECK_INTERVAL_MS = 5000;
const START_PATIENCE_MS = 30_000;
/**
 * How long a nacked retry or dead-letter copy is sent again before the
 * delivery is rejected to Q.dead (LEVERET_REPUBLISH_PATIENCE, in seconds).
 */
export const REPUBLISH_PATIENCE_MS = 30_000;

/** The worker cannot start, and retrying will not help: exit 1 with this one line. */
export class StartupError extends Error {
  name = "StartupError";
}

class ConnectionLost extends Error {
  name = "ConnectionLost";
}

/**
 * Run handlers against one work queue until stop() is called.
 *
 * @param options.url        the broker URL
 * @param options.queue      the work queue Q
 * @param options.schemas    a Schemas instance (src/schemas.js)
 * @param options.handlers   [{type, versions: [1, 2], handle(payload, ctx), timeoutMs?, track?}]
 * @param options.prefetch   basic.qos prefetch, and so the handlers running at once
 * @param options.graceMs    how long in-flight handlers may run on after stop()
 * @param options.maxAttempts the queue's max_attempts, or null: with it, a transient failure on the last attempt reports "failed"
 * @param options.maxSize    the largest body accepted
 * @param options.log        {info, warn, error}(event, fields)
 * @param options.stallAfter  seconds with messages waiting and none settled before the worker is unready
 * @param options.checkIntervalMs how often the queue is checked (consumers, messages waiting)
 * @param options.healthFile  a file touched at each check while the worker is live, or null
 * @param options.republishPatienceMs how long a nacked copy is sent again before the delivery is rejected
 */
export class Worker {
  #stopRequested = false;
  #onStop = [];
  #inflight = new Set();
  #reported = ""; // the readiness reason last logged: log changes, not every tick
  #canReport = false; // the leveret.status exchange exists (checked at each connect)

  constructor({
    url,
    queue,
    schemas,
    handlers,
    prefetch = 8,
    graceMs = 30_000,
    maxAttempts = null,
    maxSize = DEFAULT_MAX_SIZE,
    log = logger,
    stallAfter = STALL_AFTER,
    checkIntervalMs = CHECK_INTERVAL_MS,
    healthFile = null,
    republishPatienceMs = REPUBLISH_PATIENCE_MS,
  }) {
    this.url = url;
    this.queue = queue;
    this.schemas = schemas;
    this.prefetch = prefetch;
    this.graceMs = graceMs;
    this.maxAttempts = maxAttempts; // the queue's max_attempts, when known (LEVERET_MAX_ATTEMPTS)
    this.maxSize = maxSize;
    this.log = log;
    this.checkIntervalMs = checkIntervalMs;
    this.healthFile = healthFile;
    this.republishPatienceMs = republishPatienceMs;
    /** What the probes ask (src/health.js), and the figures /metrics shows. */
    this.health = new Health({ queues: [queue], stallAfter, now: monotonic() });
    this.metrics = new Metrics();
    this.identity = `${hostname()}:${process.pid}`;
    this.handlers = new Map();
    for (const h of handlers) this.#register(h);
    if (this.handlers.size === 0) throw new StartupError("no handlers: nothing to consume");
  }

  #register({ type, versions, handle, timeoutMs = DEFAULT_TIMEOUT_MS, track = false }) {
    if (typeof handle !== "function") throw new StartupError(`handler for ${type}: handle must be a function`);
    for (const v of versions) {
      if (!this.schemas.has(type, v)) throw new StartupError(`handler for ${type} v${v}: no schema file for it`);
    }
    if (this.handlers.has(type)) throw new StartupError(`two handlers for ${type}`);
    this.handlers.set(type, { type, versions: new Set(versions), handle, timeoutMs, track: Boolean(track) });
  }

  /** Ask the worker to shut down gracefully (safe from a signal handler). */
  stop() {
    if (this.#stopRequested) return;
    this.#stopRequested = true;
    for (const wake of this.#onStop.splice(0)) wake();
  }

  #stopped() {
    return this.#stopRequested ? Promise.resolve() : new Promise((wake) => this.#onStop.push(wake));
  }

  /**
   * Consume until stop(), reconnecting with backoff when the connection or a
   * channel is lost. Rejects with a StartupError when the topology is missing,
   * access is refused, or the broker stays unreachable for 30 s at start.
   */
  async run() {
    // Readiness is logged and the health file touched while live, connected
    // or not: a reconnect within the grace keeps the container.
    const tick = setInterval(() => this.#healthTick(), this.checkIntervalMs);
    try {
      await this.#loop();
    } finally {
      clearInterval(tick);
    }
  }

  async #loop() {
    let started = false;
    let delay = 500;
    const giveUpAt = Date.now() + START_PATIENCE_MS;
    while (!this.#stopRequested) {
      try {
        await this.#session(started);
        started = true;
        delay = 500;
      } catch (err) {
        if (err instanceof StartupError) throw err;
        if (err?.code === 403) throw new StartupError(`access refused: ${this.#text(err)}`);
        if (!started && /ACCESS.REFUSED/.test(String(err?.message))) {
          throw new StartupError(`the broker refused the credentials: ${this.#text(err)}`);
        }
        if (!started && /Expected ConnectionOpenOk/.test(String(err?.message))) {
          throw new StartupError(`the broker refused the virtual host of ${redact(this.url)} (missing, or no permission)`);
        }
        if (!started && Date.now() > giveUpAt) {
          throw new StartupError(`cannot reach the broker at ${redact(this.url)}: ${this.#text(err)}`);
        }
        if (err instanceof ConnectionLost) {
          started = true; // it had been consuming: reconnect promptly
          delay = 500;
        }
        this.log.warn(started ? "worker.connection_lost" : "worker.broker_unavailable", {
          error: this.#text(err),
          retry_in_ms: delay,
        });
      }
      if (this.#stopRequested) break;
      await Promise.race([sleep(delay), this.#stopped()]);
      delay = Math.min(delay * 2, 10_000);
    }
    if (started) this.log.info("worker.stopped", { queue: this.queue });
  }

  #healthTick() {
    const now = monotonic();
    const ready = this.health.readiness(now);
    this.metrics.ready = ready.ok ? 1 : 0;
    if (ready.reason !== this.#reported && !this.health.stopping) {
      if (ready.ok) this.log.info("worker.ready", {});
      else this.log.warn("worker.unready", { reason: ready.reason, live: this.health.liveness(now).ok });
      this.#reported = ready.reason;
    }
    if (this.healthFile === null || !this.health.liveness(now).ok) return;
    try {
      writeFileSync(this.healthFile, `${Date.now() / 1000}`);
    } catch (err) {
      this.log.warn("worker.health_file_failed", { path: this.healthFile, error: String(err?.message ?? err) });
    }
  }

  #text(err) {
    return scrub(err?.message ?? String(err), this.url);
  }

  /** One connection's life. Returns after a graceful stop; throws when the connection is lost. */
  async #session(started) {
    const conn = await amqp.connect(this.url, {
      clientProperties: { connection_name: `leveret-node-worker ${this.identity}` },
    });
    let lostReason = null;
    let wakeLost;
    const lost = new Promise((wake) => (wakeLost = wake));
    const markLost = (reason) => {
      lostReason ??= reason;
      wakeLost();
    };
    let closing = false;
    conn.on("error", (err) => markLost(`connection error: ${this.#text(err)}`));
    conn.on("close", () => closing || markLost("connection closed"));
    conn.on("blocked", (reason) => this.log.warn("worker.blocked", { reason }));
    const watch = (ch, name) => {
      ch.on("error", (err) => markLost(`${name} channel: ${this.#text(err)}`));
      ch.on("close", () => closing || markLost(`${name} channel closed`));
      return ch;
    };
    let monitor;
    const channels = []; // closed in reverse order of opening: consume, publish, check
    const open = async (name, confirm = false) => {
      const ch = watch(await (confirm ? conn.createConfirmChannel() : conn.createChannel()), name);
      channels.unshift(ch);
      return ch;
    };
    try {
      await this.#verify(conn, started);
      const check = await open("check");
      const publisher = new ConfirmPublisher(await open("publish", true));
      // A channel for one resend of a nacked copy: RabbitMQ 3.10/3.11 can keep
      // nacking on a channel whose quorum-queue client learned a queue's
      // members while a stopped node was still recorded as its leader; a new
      // channel learns them afresh. Unwatched, so its closing is no lost
      // connection; an error on it fails that publish (ConfirmPublisher).
      const fresh = () => conn.createConfirmChannel();
      const consume = await open("consume");
      await consume.prefetch(this.prefetch);
      let draining = false;
      const { consumerTag } = await consume.consume(
        this.queue,
        (msg) => {
          if (msg === null) return markLost(`the broker cancelled the consumer on '${this.queue}'`);
          if (draining) {
            // It arrived after shutdown began: hand it back to Q untouched.
            try {
              consume.reject(msg, true);
            } catch {
              // the channel is closing; the broker requeues it anyway
            }
            return;
          }
          const task = this.#process(msg, consume, publisher, fresh).finally(() => this.#inflight.delete(task));
          this.#inflight.add(task);
        },
        { noAck: false },
      );
      this.health.connectionUp(monotonic());
      this.metrics.connected = 1;
      if (started) this.metrics.reconnects += 1;
      await this.#checkConsumer(check);
      this.log.info(started ? "worker.resumed" : "worker.consuming", {
        queue: this.queue,
        prefetch: this.prefetch,
        types: [...this.handlers.keys()],
        broker: redact(this.url),
      });
      monitor = setInterval(() => {
        this.#checkConsumer(check).catch((err) => {
          this.log.error("worker.consumer_lost", { error: this.#text(err) });
          markLost(this.#text(err));
        });
      }, this.checkIntervalMs);
      await Promise.race([this.#stopped(), lost]);
      if (lostReason !== null) throw new ConnectionLost(lostReason);
      clearInterval(monitor); // the cancel below leaves zero consumers on purpose
      draining = true;
      this.health.draining(monotonic());
      await this.#drain(consume, consumerTag);
    } finally {
      clearInterval(monitor);
      this.health.connectionDown(monotonic());
      this.metrics.connected = 0;
      closing = true;
      // amqplib may put connection.close on the wire ahead of frames still
      // queued on a channel, such as the last acks: close each channel first
      // (its close-ok comes after the broker has processed them).
      if (lostReason === null) for (const ch of channels) await closeChannel(ch);
      await conn.close().catch(() => {});
    }
  }

  /** Passive declares of Q, Q.retry, Q.dead and Q.dlq, each on a channel of its own. */
  async #verify(conn, started) {
    const needed = [
      ["queue", this.queue],
      ["exchange", retryExchange(this.queue)],
      ["exchange", deadExchange(this.queue)],
      ["queue", deadLetterQueue(this.queue)],
    ];
    const missing = [];
    for (const [kind, name] of needed) {
      if (!(await this.#exists(conn, kind, name))) missing.push(`${kind} '${name}'`);
    }
    // Status goes to leveret.status only if it exists: publishing to a missing
    // exchange would close the confirm channel that copies are settled on.
    this.#canReport = await this.#exists(conn, "exchange", STATUS_EXCHANGE);
    const tracked = [...this.handlers.values()].filter((h) => h.track).map((h) => h.type);
    if (!this.#canReport && tracked.length) {
      this.log.warn("status.exchange_missing", { exchange: STATUS_EXCHANGE, tracked, hint: "status is not reported" });
    }
    if (missing.length === 0) return;
    const line = `missing on the broker: ${missing.join(", ")}; run \`leveret topology apply\``;
    if (!started) throw new StartupError(line);
    throw new Error(line); // after a start: wait for the topology to come back
  }

  /** A passive declare, on a channel of its own (a 404 closes the channel). */
  async #exists(conn, kind, name) {
    const ch = await conn.createChannel();
    ch.on("error", () => {}); // a 404 closes this channel; the rejection below reports it
    try {
      await (kind === "queue" ? ch.checkQueue(name) : ch.checkExchange(name));
      await ch.close();
      return true;
    } catch (err) {
      if (err?.code === 403) throw new StartupError(`access refused on ${kind} '${name}': ${this.#text(err)}`);
      if (err?.code !== 404) throw err;
      return false;
    }
  }

  /** A reconnect that leaves zero consumers is a silent failure: ask the broker. */
  async #checkConsumer(check) {
    const { consumerCount, messageCount } = await check.checkQueue(this.queue);
    this.health.checked([[this.queue, consumerCount]], [[this.queue, messageCount]], monotonic());
    this.metrics.checked(this.queue, consumerCount, messageCount);
    if (consumerCount === 0) throw new Error(`no consumer registered on '${this.queue}'`);
  }

  /** Stop taking messages; let in-flight handlers finish and settle within the grace period. */
  async #drain(consume, consumerTag) {
    try {
      await consume.cancel(consumerTag);
    } catch (err) {
      this.log.warn("worker.cancel_failed", { error: this.#text(err) });
    }
    const pending = [...this.#inflight];
    this.log.info("worker.draining", { in_flight: pending.length, grace_ms: this.graceMs });
    if (pending.length === 0) return;
    let timer;
    const expired = new Promise((wake) => (timer = setTimeout(() => wake(true), this.graceMs)));
    const late = await Promise.race([Promise.allSettled(pending).then(() => false), expired]);
    clearTimeout(timer);
    if (late) this.log.warn("worker.grace_expired", { unfinished: this.#inflight.size });
  }

  /** Check, run and settle one delivery; log its outcome. Never throws. */
  async #process(msg, consume, publisher, fresh) {
    const started = performance.now();
    this.metrics.received(this.queue);
    const delivery = toDelivery(msg);
    let decision = null; // null: ack
    // A batch member reports its end, tracked or not (even when it is invalid).
    const member = batchOf(delivery) !== null;
    if (member && !this.#canReport) {
      this.log.error("status.batch_member_unreported", {
        message_id: delivery.messageId,
        hint: `no '${STATUS_EXCHANGE}' exchange: apply a tracked app's topology`,
      });
    }
    let tracked = member && this.#canReport;
    const status = (state, fields) => report({ publisher, schemas: this.schemas, log: this.log }, delivery, state, fields);
    try {
      const { handler, version, payload } = resolve(delivery, {
        handlers: this.handlers,
        validate: (type, v, value) => this.schemas.validate(type, v, value),
        maxSize: this.maxSize,
      });
      tracked ||= handler.track && this.#canReport;
      const controller = new AbortController();
      const ctx = this.#context(delivery, version, publisher, controller.signal, tracked ? status : null);
      if (tracked) await status("started");
      const result = await this.#call(handler, payload, ctx, controller);
      // Before the ack: a crash in between repeats the task, never leaves a
      // finished job looking unfinished.
      if (tracked) await status("succeeded", { result: typeof result === "string" ? result : undefined });
    } catch (err) {
      decision = failure(delivery, this.queue, err, { consumer: `${this.queue}@${this.identity}` });
    }
    const outcome = await this.#settle(msg, decision, consume, publisher, fresh);
    this.health.settled(monotonic());
    this.metrics.settled(this.queue, delivery.type, outcome, (performance.now() - started) / 1000);
    // After the copy was confirmed and the delivery settled. The worker does
    // not know the retry delays: no next_attempt_at. A transient failure on
    // the last attempt (which the broker sends on to Q.dlq) reads "failed" when
    // maxAttempts is known, else "retrying".
    if (tracked && outcome === "retry_scheduled") {
      if (this.maxAttempts !== null && delivery.attempt >= this.maxAttempts) {
        await status("failed", { reason: decision.reason, error: decision.error });
      } else {
        await status("retrying", { error: decision.error });
      }
    }
    if (tracked && outcome === "dead_lettered") await status("failed", { reason: decision.reason, error: decision.error });
    const fields = {
      message_id: delivery.messageId,
      trace_id: delivery.trace.context.traceId,
      type: delivery.type,
      version: delivery.version,
      queue: this.queue,
      attempt: delivery.attempt,
      outcome,
      duration_ms: Math.round((performance.now() - started) * 100) / 100,
      reason: decision?.reason,
      error: decision?.error ?? null,
    };
    const level = outcome === "processed" ? "info" : outcome === "dead_lettered" ? "error" : "warn";
    this.log[level](`message.${outcome}`, fields);
  }

  /** Run a handler with its timeout, resolving to what it returned; on timeout, abort ctx.signal and fail (transient). */
  async #call(handler, payload, ctx, controller) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => {
        const err = new HandlerTimeout(`handler for ${handler.type} exceeded its timeout of ${handler.timeoutMs} ms`);
        controller.abort(err);
        reject(err);
      }, handler.timeoutMs);
    });
    try {
      return await Promise.race([Promise.resolve().then(() => handler.handle(payload, ctx)), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** What a handler gets besides its payload. `status` is set for a tracked job. */
  #context(delivery, version, publisher, signal, status) {
    const schemas = this.schemas;
    const maxSize = this.maxSize;
    return {
      messageId: delivery.messageId ?? "",
      type: delivery.type,
      version,
      queue: this.queue,
      attempt: delivery.attempt,
      redelivered: delivery.redelivered,
      correlationId: delivery.properties.correlationId ?? null,
      headers: delivery.headers,
      /** The trace this delivery belongs to (a new one when it came without a valid traceparent). */
      traceId: delivery.trace.context.traceId,
      /** Aborted when the handler times out: pass it to anything cancellable. */
      signal,
      log: this.log,
      /** Whether this job reports its status (a tracked handler, or a batch member). */
      tracked: status !== null,
      /**
       * Report progress: a percent (0-100) and a line of text, to leveret.status.
       * Resolves once confirmed; never rejects. Does nothing for an untracked job.
       */
      async progress(percent, message) {
        if (status) await status("progress", { percent, message });
      },
      /**
       * Publish a message the way the contract says: validated, with its
       * properties, persistent, mandatory, and confirmed before this resolves.
       * It continues this delivery's trace (a traceparent in `headers` is
       * replaced). Returns the new message id.
       */
      async publish(type, v, payload, { exchange, routingKey = "", correlationId, headers } = {}) {
        if (typeof exchange !== "string") throw new TypeError("publish: an exchange is required");
        const trace = followUpHeaders(delivery.trace);
        const { body, properties } = outgoing(schemas, type, v, payload, { maxSize, correlationId, headers, trace });
        await publisher.publish(exchange, routingKey, body, properties);
        return properties.messageId;
      },
    };
  }

  /** Ack; or publish the copy, wait for the confirm, then ack; or reject without requeue. */
  async #settle(msg, decision, consume, publisher, fresh) {
    try {
      if (decision === null) {
        consume.ack(msg);
        return "processed";
      }
      const began = Date.now();
      try {
        await this.#republish(msg, decision, publisher, fresh, began + this.republishPatienceMs);
      } catch (err) {
        // still nacked at the deadline, returned, or the publish channel closed
        this.log.error("message.republish_failed", {
          exchange: decision.exchange,
          error: this.#text(err),
          refused_for: (Date.now() - began) / 1000,
        });
        // Never ack a message whose copy the broker did not take: rejecting
        // it sends it down Q's own dead-letter exchange (Q.dead) instead.
        consume.reject(msg, false);
        return "dead_lettered";
      }
      consume.ack(msg);
      return decision.outcome;
    } catch (err) {
      // The consuming channel is gone: the broker redelivers the message.
      this.log.warn("message.settle_failed", { error: this.#text(err) });
      return "redelivery_pending";
    }
  }

  /**
   * Publish a failed delivery's copy, sending it again while the broker nacks
   * it, each on a confirm channel of its own, until `deadline` (ms since the
   * epoch). Rejects with the last Nacked, or at once on anything else
   * (returned, the channel closed).
   */
  async #republish(msg, decision, publisher, fresh, deadline) {
    const send = (p) => p.publish(decision.exchange, decision.routingKey, msg.content, decision.properties);
    let pause = 50;
    for (let refusals = 0; ; refusals += 1) {
      try {
        if (refusals === 0) return await send(publisher);
        const ch = await fresh();
        try {
          return await send(new ConfirmPublisher(ch));
        } finally {
          await closeChannel(ch);
        }
      } catch (err) {
        if (!(err instanceof Nacked)) throw err;
        const now = Date.now();
        if (now + pause > deadline) throw err;
        if (refusals === 0) {
          // once a delivery: the outcome's line says how it ended
          this.log.warn("message.republish_refused", {
            exchange: decision.exchange,
            sending_again_for: (deadline - now) / 1000,
          });
        }
      }
      await sleep(pause);
      pause = Math.min(pause * 2, 2000);
    }
  }
}

/** Close a channel, waiting a little for the broker's close-ok. */
async function closeChannel(ch, timeoutMs = 5000) {
  let timer;
  const late = new Promise((wake) => (timer = setTimeout(wake, timeoutMs)));
  await Promise.race([ch.close().catch(() => {}), late]);
  clearTimeout(timer);
}
