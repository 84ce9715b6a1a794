// Structured logs: one JSON object per line on stderr.

/**
 * Write one log line: {"time", "level", "event", ...fields}. Undefined fields
 * are left out; errors are written as their message.
 */
export function log(level, event, fields = {}) {
  const line = { time: new Date().toISOString(), level, event };
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    line[key] = value instanceof Error ? value.message : value;
  }
  process.stderr.write(`${JSON.stringify(line)}\n`);
}

const debugging = (process.env.LEVERET_LOG_LEVEL ?? "").toLowerCase() === "debug";

export const logger = {
  debug: debugging ? (event, fields) => log("debug", event, fields) : () => {}, // LEVERET_LOG_LEVEL=debug
  info: (event, fields) => log("info", event, fields),
  warn: (event, fields) => log("warning", event, fields),
  error: (event, fields) => log("error", event, fields),
};
