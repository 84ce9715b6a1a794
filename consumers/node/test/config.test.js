import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { ConfigError, DEFAULT_SCHEMAS, loadConfig, redact, scrub } from "../src/config.js";

describe("loadConfig", () => {
  it("has the documented defaults", () => {
    const config = loadConfig({});
    assert.equal(config.url, "amqp://localhost:5672/");
    assert.equal(config.queue, "leveret.demo.tasks");
    assert.equal(config.prefetch, 8);
    assert.equal(config.graceMs, 30_000);
    assert.equal(config.republishPatienceMs, 30_000);
    assert.equal(config.schemas, DEFAULT_SCHEMAS);
  });

  it("finds the repository's schemas/ from the worker's own files", () => {
    assert.ok(existsSync(join(DEFAULT_SCHEMAS, "leveret.conformance.v1.json")), DEFAULT_SCHEMAS);
  });

  it("reads the environment", () => {
    const config = loadConfig({
      LEVERET_URL: "amqp://u:p@rabbit:5672/vh",
      LEVERET_QUEUE: "jobs",
      LEVERET_SCHEMAS: "/srv/schemas",
      LEVERET_PREFETCH: "32",
      LEVERET_GRACE: "2.5",
      LEVERET_MAX_ATTEMPTS: "3",
      LEVERET_HTTP_HOST: "0.0.0.0",
      LEVERET_HTTP_PORT: "9100",
      LEVERET_STALL_AFTER: "60",
      LEVERET_CHECK_INTERVAL: "0.5",
      LEVERET_HEALTH_FILE: "/tmp/live",
      LEVERET_REPUBLISH_PATIENCE: "1.5",
    });
    assert.deepEqual(config, {
      url: "amqp://u:p@rabbit:5672/vh",
      queue: "jobs",
      schemas: "/srv/schemas",
      prefetch: 32,
      graceMs: 2500,
      maxAttempts: 3,
      httpHost: "0.0.0.0",
      httpPort: 9100,
      stallAfter: 60,
      checkIntervalMs: 500,
      healthFile: "/tmp/live",
      republishPatienceMs: 1500,
    });
    assert.equal(loadConfig({}).maxAttempts, null);
  });

  it("serves no probes without a port, and listens on loopback by default", () => {
    const config = loadConfig({ LEVERET_HTTP_PORT: "9100" });
    assert.equal(loadConfig({}).httpPort, null);
    assert.equal(config.httpHost, "127.0.0.1");
    assert.equal(config.stallAfter, 300);
    assert.equal(config.checkIntervalMs, 5000);
    assert.throws(() => loadConfig({ LEVERET_HTTP_PORT: "http" }), /LEVERET_HTTP_PORT must be a port number/);
    assert.throws(() => loadConfig({ LEVERET_STALL_AFTER: "0" }), /LEVERET_STALL_AFTER must be a positive number/);
  });

  it("refuses a bad prefetch or URL, without showing the password", () => {
    assert.throws(() => loadConfig({ LEVERET_PREFETCH: "0" }), ConfigError);
    assert.throws(() => loadConfig({ LEVERET_PREFETCH: "eight" }), ConfigError);
    assert.throws(() => loadConfig({ LEVERET_MAX_ATTEMPTS: "0" }), /LEVERET_MAX_ATTEMPTS must be a positive integer/);
    assert.throws(
      () => loadConfig({ LEVERET_URL: "http://u:hunter2@x/" }),
      (err) => err instanceof ConfigError && !err.message.includes("hunter2"),
    );
  });
});

describe("redact", () => {
  it("hides the password, keeps the rest", () => {
    assert.equal(redact("amqp://guest:guest@localhost:5672/"), "amqp://guest:***@localhost:5672/");
    assert.equal(redact("amqps://u:s3cr%40t@h/vh?heartbeat=10"), "amqps://u:***@h/vh?heartbeat=10");
    assert.equal(redact("amqp://localhost"), "amqp://localhost");
    assert.equal(redact("amqp://user@localhost"), "amqp://user@localhost");
  });

  it("hides a password with a raw @ or / in it", () => {
    assert.equal(redact("amqp://u:p@ss/w@host:5672/"), "amqp://u:***@host:5672/");
  });

  it("scrub removes the password from any text", () => {
    assert.equal(scrub("login u:pw failed", "amqp://u:pw@h/"), "login u:*** failed");
    assert.equal(scrub("nothing", "amqp://h/"), "nothing");
  });
});
