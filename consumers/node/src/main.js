#!/usr/bin/env node
// The leveret Node worker: consume LEVERET_QUEUE and run the demo handlers.
// SIGTERM/SIGINT: cancel, let in-flight handlers finish and settle, exit 0.

import { ConfigError, loadConfig } from "./config.js";
import { handlers } from "./handlers.js";
import { serveProbes } from "./probes.js";
import { SchemaError, Schemas } from "./schemas.js";
import { StartupError, Worker } from "./worker.js";

let worker;
let config;
try {
  config = loadConfig();
  worker = new Worker({ ...config, schemas: Schemas.load(config.schemas), handlers });
} catch (err) {
  if (!(err instanceof ConfigError || err instanceof SchemaError || err instanceof StartupError)) throw err;
  console.error(`leveret-node-worker: ${err.message}`);
  process.exit(1);
}

if (config.httpPort !== null) {
  try {
    const server = await serveProbes({ health: worker.health, metrics: worker.metrics, host: config.httpHost, port: config.httpPort });
    const { address, port } = server.address();
    worker.log.info("worker.probes_listening", { host: address, port });
  } catch (err) {
    console.error(`leveret-node-worker: cannot serve probes on ${config.httpHost}:${config.httpPort}: ${err.message}`);
    process.exit(1);
  }
}

for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => worker.stop());

try {
  await worker.run();
} catch (err) {
  if (!(err instanceof StartupError)) throw err;
  console.error(`leveret-node-worker: ${err.message}`);
  process.exit(1);
}
// A handler still running after the grace period must not keep the process alive.
process.exit(0);
