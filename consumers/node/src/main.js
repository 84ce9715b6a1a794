#!/usr/bin/env node
// The leveret Node worker: consume LEVERET_QUEUE and run the demo handlers.
// SIGTERM/SIGINT: cancel, let in-flight handlers finish and settle, exit 0.

import { ConfigError, loadConfig } from "./config.js";
import { handlers } from "./handlers.js";
import { SchemaError, Schemas } from "./schemas.js";
import { StartupError, Worker } from "./worker.js";

let worker;
try {
  const config = loadConfig();
  worker = new Worker({ ...config, schemas: Schemas.load(config.schemas), handlers });
} catch (err) {
  if (!(err instanceof ConfigError || err instanceof SchemaError || err instanceof StartupError)) throw err;
  console.error(`leveret-node-worker: ${err.message}`);
  process.exit(1);
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
