// The worker's HTTP endpoints with node:http: GET /livez, /readyz (200, or
// 503 with the reason, as JSON) and /metrics (Prometheus text). Served on the
// worker's own event loop, so an answer proves the loop is turning.

import http from "node:http";
import { CONTENT_TYPE } from "./metrics.js";

/** Seconds on a monotonic clock, the clock Health is fed with. */
export const monotonic = () => performance.now() / 1000;

/** Status, body and content type for a request (no I/O). */
export function answer(method, path, { health, metrics, now }) {
  if (method !== "GET" && method !== "HEAD") return [405, "only GET and HEAD\n", "text/plain"];
  const verdict = (v) => [v.ok ? 200 : 503, `${JSON.stringify({ status: v.ok ? "ok" : "failing", reason: v.reason })}\n`, "application/json"];
  if (path === "/livez" || path === "/healthz") return verdict(health.liveness(now));
  if (path === "/readyz") {
    const ready = health.readiness(now);
    metrics.ready = ready.ok ? 1 : 0;
    return verdict(ready);
  }
  if (path === "/metrics") {
    metrics.ready = health.readiness(now).ok ? 1 : 0;
    return [200, metrics.render(), CONTENT_TYPE];
  }
  return [404, "not found: try /livez, /readyz or /metrics\n", "text/plain"];
}

/** Listen on host:port; resolves to the server once it listens. */
export function serveProbes({ health, metrics, host, port, clock = monotonic }) {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?", 1)[0];
    const [status, body, kind] = answer(req.method, path, { health, metrics, now: clock() });
    res.writeHead(status, { "Content-Type": kind, "Content-Length": Buffer.byteLength(body), "Cache-Control": "no-store", Connection: "close" });
    res.end(req.method === "HEAD" ? undefined : body);
  });
  server.requestTimeout = 5000;
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      server.unref(); // the worker's own life decides when the process ends
      resolve(server);
    });
  });
}
