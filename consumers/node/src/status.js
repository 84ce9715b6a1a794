// Job status (docs/contract.md, "Job status"): leveret.job.status v1 events on
// the topic exchange leveret.status, routing key = the job id (the task's
// message id). Status is reported, never required: report() never throws.

import { Unroutable } from "./confirm.js";
import { followUpHeaders } from "./trace.js";
import { outgoing } from "./wire.js";

export const STATUS_EXCHANGE = "leveret.status";
export const STATUS_TYPE = "leveret.job.status";
export const BATCH_HEADER = "leveret-batch-id";

/**
 * Now, as ISO 8601 UTC to the microsecond: 2026-01-02T03:04:05.123456+00:00.
 * Date has milliseconds only; the high-resolution clock gives the rest, so one
 * worker's events of a job keep their order (the status store sorts by `at`).
 */
export function statusTime(ms = performance.timeOrigin + performance.now()) {
  const whole = Math.floor(ms);
  const micros = String(Math.min(999, Math.floor((ms - whole) * 1000))).padStart(3, "0");
  return new Date(whole).toISOString().replace(/Z$/, `${micros}+00:00`);
}

/** The batch a delivery belongs to (its `leveret-batch-id` header), or null. */
export function batchOf(delivery) {
  const id = delivery.headers[BATCH_HEADER];
  return typeof id === "string" ? id : null;
}

/** A status event of a delivery's job; fields that are undefined or null are left out. */
export function jobStatus(delivery, state, fields = {}, at = statusTime()) {
  const event = { job_id: delivery.messageId ?? "", state, at, type: delivery.type, attempt: delivery.attempt };
  const batch = batchOf(delivery);
  if (batch !== null) event.batch_id = batch;
  for (const [key, value] of Object.entries(fields)) if (value !== undefined && value !== null) event[key] = value;
  return event;
}

/**
 * Publish one status event on the worker's confirm channel (validated,
 * persistent, mandatory, confirmed), continuing the delivery's trace. An
 * event the schema refuses (a result reference too long, say) is sent with the
 * state alone. A return (nothing bound to the job id) is logged at debug
 * level; any other failure is logged.
 */
export async function report({ publisher, schemas, log }, delivery, state, fields = {}) {
  const event = jobStatus(delivery, state, fields);
  const what = { job_id: event.job_id, state };
  const options = { correlationId: delivery.properties.correlationId ?? event.job_id, trace: followUpHeaders(delivery.trace) };
  let message;
  try {
    message = outgoing(schemas, STATUS_TYPE, 1, event, options);
  } catch (err) {
    log.warn("status.invalid", { ...what, error: err.message });
    try {
      message = outgoing(schemas, STATUS_TYPE, 1, jobStatus(delivery, state, {}, event.at), options);
    } catch {
      return;
    }
  }
  try {
    await publisher.publish(STATUS_EXCHANGE, event.job_id, message.body, message.properties);
  } catch (err) {
    if (err instanceof Unroutable) log.debug?.("status.unroutable", what);
    else log.warn("status.not_published", { ...what, error: err.message });
  }
}
