// The worker's Prometheus metrics, rendered by hand in the text exposition
// format: the same names, labels and meaning as leveret/metrics.py, so the
// alerts in docs/prometheus/alerts.yml hold for every language.

/** Handler durations in seconds: from a millisecond to the five-minute export. */
export const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const escape = (value) => String(value).replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
const labels = (pairs) => `{${pairs.map(([k, v]) => `${k}="${escape(v)}"`).join(",")}}`;
const number = (n) => (Number.isInteger(n) ? `${n}.0` : String(n));

export class Metrics {
  constructor() {
    this.messages = new Map(); // JSON [queue, type, outcome] -> count
    this.durations = new Map(); // JSON [queue, type] -> {buckets, sum, count}
    this.inFlight = new Map(); // queue -> gauge
    this.waiting = new Map(); // queue -> last reported
    this.consumers = new Map();
    this.connected = 0;
    this.ready = 0;
    this.reconnects = 0;
  }

  received(queue) {
    this.inFlight.set(queue, (this.inFlight.get(queue) ?? 0) + 1);
  }

  /** One settled delivery: its outcome and the seconds from delivery to settlement. */
  settled(queue, type, outcome, seconds) {
    const kind = type || "unknown";
    const key = JSON.stringify([queue, kind, outcome]);
    this.messages.set(key, (this.messages.get(key) ?? 0) + 1);
    const hkey = JSON.stringify([queue, kind]);
    let h = this.durations.get(hkey);
    if (!h) this.durations.set(hkey, (h = { buckets: DURATION_BUCKETS.map(() => 0), sum: 0, count: 0 }));
    DURATION_BUCKETS.forEach((bound, i) => {
      if (seconds <= bound) h.buckets[i] += 1;
    });
    h.sum += seconds;
    h.count += 1;
    this.inFlight.set(queue, Math.max(0, (this.inFlight.get(queue) ?? 1) - 1));
  }

  checked(queue, consumers, waiting) {
    this.consumers.set(queue, consumers);
    this.waiting.set(queue, waiting);
  }

  render() {
    const out = [];
    const family = (name, help, type) => out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    family("leveret_messages_total", "Deliveries settled, by queue, message type and outcome.", "counter");
    for (const [key, n] of this.messages) {
      const [queue, type, outcome] = JSON.parse(key);
      out.push(`leveret_messages_total${labels([["queue", queue], ["type", type], ["outcome", outcome]])} ${number(n)}`);
    }
    family("leveret_handler_duration_seconds", "Time from delivery to settlement, handler included.", "histogram");
    for (const [key, h] of this.durations) {
      const [queue, type] = JSON.parse(key);
      const base = [["queue", queue], ["type", type]];
      DURATION_BUCKETS.forEach((bound, i) => {
        out.push(`leveret_handler_duration_seconds_bucket${labels([...base, ["le", number(bound)]])} ${number(h.buckets[i])}`);
      });
      out.push(`leveret_handler_duration_seconds_bucket${labels([...base, ["le", "+Inf"]])} ${number(h.count)}`);
      out.push(`leveret_handler_duration_seconds_sum${labels(base)} ${number(h.sum)}`);
      out.push(`leveret_handler_duration_seconds_count${labels(base)} ${number(h.count)}`);
    }
    family("leveret_messages_in_flight", "Deliveries received and not yet settled.", "gauge");
    for (const [queue, n] of this.inFlight) out.push(`leveret_messages_in_flight${labels([["queue", queue]])} ${number(n)}`);
    family("leveret_reconnects_total", "Connections to the broker made again after one was lost.", "counter");
    out.push(`leveret_reconnects_total ${number(this.reconnects)}`);
    family("leveret_worker_connected", "1 while connected to the broker.", "gauge");
    out.push(`leveret_worker_connected ${number(this.connected)}`);
    family("leveret_worker_ready", "1 while the worker's readiness probe passes.", "gauge");
    out.push(`leveret_worker_ready ${number(this.ready)}`);
    family("leveret_queue_messages", "Messages ready in a queue, as the broker last reported them.", "gauge");
    for (const [queue, n] of this.waiting) out.push(`leveret_queue_messages${labels([["queue", queue], ["role", "work"]])} ${number(n)}`);
    family("leveret_queue_consumers", "Consumers of a queue, as the broker last reported them.", "gauge");
    for (const [queue, n] of this.consumers) out.push(`leveret_queue_consumers${labels([["queue", queue], ["role", "work"]])} ${number(n)}`);
    return `${out.join("\n")}\n`;
  }
}
