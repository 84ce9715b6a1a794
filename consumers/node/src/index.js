// The worker as a library: build a Worker with your own handlers.

export { DEFAULTS, DEFAULT_SCHEMAS, loadConfig, redact } from "./config.js";
export { Schemas } from "./schemas.js";
export { DeadLetter } from "./wire.js";
export { StartupError, Worker } from "./worker.js";
