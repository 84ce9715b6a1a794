// The health rules (src/health.js) with the test's own clock, and what the
// probes answer (src/probes.js) and /metrics shows (src/metrics.js): no broker.

import assert from "node:assert/strict";
import { test } from "node:test";
import { Health } from "../src/health.js";
import { Metrics } from "../src/metrics.js";
import { answer } from "../src/probes.js";

function connected({ now = 0, ...options } = {}) {
  const h = new Health({ queues: ["q"], now, ...options });
  h.connectionUp(now);
  h.checked([["q", 1]], [["q", 0]], now);
  return h;
}

test("unready until connected and a consumer is registered", () => {
  const h = new Health({ queues: ["q"], now: 0 });
  assert.equal(h.readiness(0).reason, "not connected to the broker");
  h.connectionUp(1);
  assert.equal(h.readiness(1).reason, "no consumer registered on q");
  h.checked([["q", 1]], [["q", 0]], 1);
  assert.deepEqual(h.readiness(1), { ok: true, reason: "" });
});

test("an idle worker on an empty queue never stalls", () => {
  const h = connected({ stallAfter: 10 });
  for (let t = 0; t < 1000; t += 5) h.checked([["q", 1]], [["q", 0]], t);
  assert.ok(h.readiness(1000).ok && h.liveness(1000).ok);
});

test("stalled when messages wait and nothing settles; a settle clears it", () => {
  const h = connected({ stallAfter: 10 });
  // The clock starts when work appears, not at the last settle.
  h.checked([["q", 1]], [["q", 4]], 100);
  assert.ok(h.readiness(105).ok);
  h.checked([["q", 1]], [["q", 4]], 111);
  const verdict = h.readiness(111);
  assert.equal(verdict.ok, false);
  assert.match(verdict.reason, /^stalled: 4 message\(s\) waiting and none settled for 11s \(limit 10s\)/);
  h.settled(112);
  assert.ok(h.readiness(112).ok);
});

test("steady progress through a backlog is healthy", () => {
  const h = connected({ stallAfter: 10 });
  for (let t = 100; t < 200; t += 1) {
    h.checked([["q", 1]], [["q", 500]], t);
    h.settled(t);
  }
  assert.ok(h.readiness(200).ok);
});

test("liveness fails only after the grace, and a reconnect restores it", () => {
  const h = connected({ grace: 30 });
  h.connectionDown(50);
  assert.equal(h.readiness(50).ok, false);
  assert.ok(h.liveness(79).ok);
  const dead = h.liveness(81);
  assert.equal(dead.ok, false);
  assert.match(dead.reason, /^not connected to the broker for 31s \(grace 30s\)/);
  h.connectionUp(82);
  h.checked([["q", 1]], [["q", 0]], 82);
  assert.ok(h.liveness(82).ok);
});

test("a draining worker is unready but live", () => {
  const h = connected();
  h.draining(10);
  assert.equal(h.readiness(10).reason, "the worker is shutting down");
  assert.ok(h.liveness(1000).ok);
});

test("the probes answer 200 or 503 with the reason as JSON", () => {
  const health = new Health({ queues: ["q"], now: 0 });
  const metrics = new Metrics();
  const [status, body, kind] = answer("GET", "/readyz", { health, metrics, now: 0 });
  assert.equal(status, 503);
  assert.equal(kind, "application/json");
  assert.deepEqual(JSON.parse(body), { status: "failing", reason: "not connected to the broker" });
  assert.equal(answer("GET", "/livez", { health, metrics, now: 1 })[0], 200);
  assert.equal(answer("POST", "/livez", { health, metrics, now: 1 })[0], 405);
  assert.equal(answer("GET", "/nope", { health, metrics, now: 1 })[0], 404);
  health.connectionUp(2);
  health.checked([["q", 1]], [["q", 0]], 2);
  assert.deepEqual(JSON.parse(answer("GET", "/readyz", { health, metrics, now: 2 })[1]), { status: "ok", reason: "" });
  assert.equal(metrics.ready, 1);
});

test("metrics count outcomes by queue, type and outcome, and time them", () => {
  const m = new Metrics();
  m.received("q");
  m.received("q");
  m.settled("q", "demo.export", "processed", 0.003);
  m.settled("q", null, "dead_lettered", 0.2);
  m.checked("q", 2, 7);
  const text = m.render();
  assert.match(text, /^leveret_messages_total\{queue="q",type="demo.export",outcome="processed"\} 1\.0$/m);
  assert.match(text, /^leveret_messages_total\{queue="q",type="unknown",outcome="dead_lettered"\} 1\.0$/m);
  assert.match(text, /^leveret_handler_duration_seconds_bucket\{queue="q",type="demo.export",le="0.001"\} 0\.0$/m);
  assert.match(text, /^leveret_handler_duration_seconds_bucket\{queue="q",type="demo.export",le="0.005"\} 1\.0$/m);
  assert.match(text, /^leveret_handler_duration_seconds_count\{queue="q",type="demo.export"\} 1\.0$/m);
  assert.match(text, /^leveret_messages_in_flight\{queue="q"\} 0\.0$/m);
  assert.match(text, /^leveret_queue_messages\{queue="q",role="work"\} 7\.0$/m);
  assert.match(text, /^leveret_queue_consumers\{queue="q",role="work"\} 2\.0$/m);
  assert.match(text, /^# TYPE leveret_reconnects_total counter$/m);
});

test("label values are escaped", () => {
  const m = new Metrics();
  m.settled('a"b\\c', "t", "processed", 1);
  assert.match(m.render(), /queue="a\\"b\\\\c"/);
});
