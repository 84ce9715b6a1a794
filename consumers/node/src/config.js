// Configuration from the environment, and keeping the password out of logs.

import { fileURLToPath } from "node:url";
import { STALL_AFTER } from "./health.js";

export const DEFAULTS = Object.freeze({
  url: "amqp://localhost:5672/", // no credentials: RabbitMQ's default user
  queue: "leveret.demo.tasks",
  prefetch: 8,
  graceSeconds: 30,
  republishPatienceSeconds: 30,
});

/** The repository's schemas/ folder, found relative to this file (consumers/node/src/). */
export const DEFAULT_SCHEMAS = fileURLToPath(new URL("../../../schemas/", import.meta.url));

export class ConfigError extends Error {
  name = "ConfigError";
}

function positiveInt(name, raw, fallback) {
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

function positiveNumber(name, raw, fallback) {
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new ConfigError(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return n;
}

function port(name, raw) {
  if (raw === undefined || raw === "") return null;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new ConfigError(`${name} must be a port number (0-65535), got ${JSON.stringify(raw)}`);
  return n;
}

/**
 * Read the worker's settings:
 *   LEVERET_URL, LEVERET_QUEUE, LEVERET_SCHEMAS, LEVERET_PREFETCH, and
 *   LEVERET_GRACE (seconds in-flight handlers get on shutdown, default 30),
 *   LEVERET_MAX_ATTEMPTS (the queue's max_attempts, optional: with it, a
 *   transient failure on the last attempt reports "failed", not "retrying"),
 *   LEVERET_HTTP_PORT and LEVERET_HTTP_HOST (serve /livez, /readyz and
 *   /metrics; no port, no server; host 127.0.0.1 by default),
 *   LEVERET_STALL_AFTER (seconds, default 300), LEVERET_CHECK_INTERVAL
 *   (seconds between checks of the queue, default 5), LEVERET_HEALTH_FILE,
 *   LEVERET_REPUBLISH_PATIENCE (seconds a nacked retry or dead-letter copy is
 *   sent again before the delivery is dead-lettered, default 30).
 */
export function loadConfig(env = process.env) {
  const url = env.LEVERET_URL || DEFAULTS.url;
  if (!/^amqps?:\/\//i.test(url)) throw new ConfigError(`LEVERET_URL must be an amqp:// or amqps:// URL, got ${redact(url)}`);
  return {
    url,
    queue: env.LEVERET_QUEUE || DEFAULTS.queue,
    schemas: env.LEVERET_SCHEMAS || DEFAULT_SCHEMAS,
    prefetch: positiveInt("LEVERET_PREFETCH", env.LEVERET_PREFETCH, DEFAULTS.prefetch),
    graceMs: positiveNumber("LEVERET_GRACE", env.LEVERET_GRACE, DEFAULTS.graceSeconds) * 1000,
    maxAttempts: positiveInt("LEVERET_MAX_ATTEMPTS", env.LEVERET_MAX_ATTEMPTS, null),
    httpHost: env.LEVERET_HTTP_HOST || "127.0.0.1",
    httpPort: port("LEVERET_HTTP_PORT", env.LEVERET_HTTP_PORT),
    stallAfter: positiveNumber("LEVERET_STALL_AFTER", env.LEVERET_STALL_AFTER, STALL_AFTER),
    checkIntervalMs: positiveNumber("LEVERET_CHECK_INTERVAL", env.LEVERET_CHECK_INTERVAL, 5) * 1000,
    healthFile: env.LEVERET_HEALTH_FILE || null,
    republishPatienceMs: positiveNumber("LEVERET_REPUBLISH_PATIENCE", env.LEVERET_REPUBLISH_PATIENCE, DEFAULTS.republishPatienceSeconds) * 1000,
  };
}

/**
 * A URL fit for a log line: `amqp://user:***@host:5672/`. Everything before
 * the last `@` ahead of the query counts as credentials, so a password with a
 * stray `@` or `/` is hidden too (at worst, too much is hidden).
 */
export function redact(url) {
  const scheme = url.indexOf("://");
  if (scheme < 0) return url;
  const rest = url.slice(scheme + 3);
  const queryStart = rest.search(/[?#]/);
  const at = (queryStart < 0 ? rest : rest.slice(0, queryStart)).lastIndexOf("@");
  if (at < 0) return url;
  const userinfo = rest.slice(0, at);
  const colon = userinfo.indexOf(":");
  const user = colon < 0 ? userinfo : userinfo.slice(0, colon);
  const masked = colon < 0 ? user : `${user}:***`;
  return `${url.slice(0, scheme + 3)}${masked}${rest.slice(at)}`;
}

/** Remove the URL's password from any text (an error message, say). */
export function scrub(text, url) {
  let password = "";
  try {
    password = decodeURIComponent(new URL(url).password);
  } catch {
    return text;
  }
  if (!password) return text;
  return String(text).split(password).join("***");
}
