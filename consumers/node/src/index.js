// The library: a Worker with your own handlers, and a Publisher for applications.

export { DEFAULTS, DEFAULT_SCHEMAS, loadConfig, redact } from "./config.js";
export { Schemas } from "./schemas.js";
export { DeadLetter, MessageError } from "./wire.js";
export { StartupError, Worker } from "./worker.js";
export { TRACEPARENT, TRACESTATE, childOf, formatTraceparent, newTrace, parseTraceparent } from "./trace.js";
export {
  AccessRefused,
  BrokerUnavailable,
  DEMO_EXCHANGE,
  EXPORT_ROUTING_KEY,
  ExchangeMissing,
  NotConfirmed,
  PublishError,
  Publisher,
  Unroutable,
  publishExportTask,
} from "./publisher.js";
