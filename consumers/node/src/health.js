// Whether the worker is healthy: the pure judgement behind its probes, the
// same rules as leveret/health.py. The worker reports what it sees (connected,
// the broker's count of consumers and messages on its queue, each settled
// delivery, draining) and the probes ask. Every call takes `now` in seconds,
// so the rules are tested with a clock of the test's own.

/** Seconds with messages waiting and nothing settled before the worker is stalled. */
export const STALL_AFTER = 300;
/** Seconds the worker may stay unready before it is no longer live. */
export const GRACE = 60;

const ok = () => ({ ok: true, reason: "" });
const failing = (reason) => ({ ok: false, reason });

export class Health {
  constructor({ queues, stallAfter = STALL_AFTER, grace = GRACE, now = 0 }) {
    this.queues = [...queues];
    this.stallAfter = stallAfter;
    this.grace = grace;
    this.connected = false;
    this.stopping = false;
    this.consumers = new Map();
    this.waiting = new Map();
    // The progress clock runs only while there is work: it restarts when a
    // delivery settles, and when work is seen after the queue was seen empty.
    this.progressAt = now;
    this.unreadySince = now;
  }

  connectionUp(now) {
    this.connected = true;
    this.consumers = new Map();
    this.progressAt = now;
    this.#update(now);
  }

  connectionDown(now) {
    this.connected = false;
    this.consumers = new Map();
    this.#update(now);
  }

  draining(now) {
    this.stopping = true;
    this.#update(now);
  }

  /** The broker's figures for the worker's queues, from a passive declare: Maps queue -> count. */
  checked(consumers, waiting, now) {
    const hadWork = this.#hasWork();
    this.consumers = new Map(consumers);
    this.waiting = new Map(waiting);
    if (!hadWork) this.progressAt = now;
    this.#update(now);
  }

  /** A delivery was settled (acked, retried or dead-lettered). */
  settled(now) {
    this.progressAt = now;
    this.#update(now);
  }

  readiness(now) {
    if (this.stopping) return failing("the worker is shutting down");
    if (!this.connected) return failing("not connected to the broker");
    const missing = this.queues.filter((q) => (this.consumers.get(q) ?? 0) < 1);
    if (missing.length) return failing(`no consumer registered on ${missing.join(", ")}`);
    const idle = now - this.progressAt;
    if (this.#hasWork() && idle > this.stallAfter) {
      const total = [...this.waiting.values()].reduce((a, b) => a + b, 0);
      return failing(
        `stalled: ${total} message(s) waiting and none settled for ${idle.toFixed(0)}s (limit ${this.stallAfter.toFixed(0)}s)`,
      );
    }
    return ok();
  }

  liveness(now) {
    const ready = this.readiness(now);
    this.#update(now, ready);
    if (ready.ok || this.stopping || this.unreadySince === null) return ok();
    const since = now - this.unreadySince;
    if (since <= this.grace) return ok();
    return failing(`${ready.reason} for ${since.toFixed(0)}s (grace ${this.grace.toFixed(0)}s)`);
  }

  #hasWork() {
    return [...this.waiting.values()].some((n) => n > 0);
  }

  #update(now, ready = null) {
    if ((ready ?? this.readiness(now)).ok) this.unreadySince = null;
    else if (this.unreadySince === null) this.unreadySince = now;
  }
}
