// The demo's handlers: demo.export v1 and v2, and leveret.conformance v1
// (docs/contract.md §8), the type `leveret conformance` tests a worker with.

import { setTimeout as sleep } from "node:timers/promises";

export const CONSUMER_NAME = "node";

/**
 * demo.export, tracked: pretend to write an export in two parts, reporting
 * progress after each, and return a reference to the result.
 */
export async function exportReport(task, ctx) {
  for (const part of [1, 2]) {
    await sleep(25, undefined, { signal: ctx.signal });
    await ctx.progress(part * 50, `wrote part ${part} of 2`);
  }
  ctx.log.info("export.written", {
    message_id: ctx.messageId,
    version: ctx.version,
    user_id: task.user_id,
    format: task.format,
    columns: task.columns ?? null,
  });
  return `exports/${ctx.messageId}.${task.format}`;
}

/** The failure a conformance task asks for. */
export class ConformanceFailure extends Error {
  name = "ConformanceFailure";
}

/**
 * leveret.conformance: sleep sleep_ms; fail while the attempt is at most
 * fail_times; otherwise publish a receipt (confirmed) to receipt_exchange.
 */
export async function conformance(task, ctx) {
  if (task.sleep_ms) await sleep(task.sleep_ms, undefined, { signal: ctx.signal });
  if (ctx.attempt <= task.fail_times) {
    throw new ConformanceFailure(`failing on purpose: attempt ${ctx.attempt} of ${task.fail_times}`);
  }
  if (task.receipt_exchange != null) {
    await ctx.publish(
      "leveret.conformance.receipt",
      1,
      { message_id: ctx.messageId, attempt: ctx.attempt, consumer: CONSUMER_NAME },
      { exchange: task.receipt_exchange, routingKey: task.receipt_routing_key ?? "" },
    );
  }
}

export const handlers = [
  { type: "demo.export", versions: [1, 2], handle: exportReport, track: true },
  { type: "leveret.conformance", versions: [1], handle: conformance },
];
