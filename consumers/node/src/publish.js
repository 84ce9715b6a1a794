#!/usr/bin/env node
// Publish one message as docs/contract.md §3 says, wait for the confirm, and
// print its message id. For people and for cross-language tests.
//
//   node src/publish.js --exchange leveret.demo --routing-key export \
//     --type demo.export --version 2 '{"user_id": 7, "format": "xlsx"}'
//
// Exit status: 0 confirmed (the id on stdout); 1 not published (one line on
// stderr: invalid payload, unroutable, broker down...); 2 bad usage.

import { parseArgs } from "node:util";
import { scrub } from "./config.js";
import { Publisher, RECONNECT_TIMEOUT_MS } from "./publisher.js";

const PROG = "leveret-publish";
const USAGE = `usage: node src/publish.js --exchange X --routing-key K --type T --version N
         [--url URL] [--message-id ID] [--correlation-id ID] [--app-id NAME]
         [--header NAME=VALUE]... [--schemas DIR] [--max-size BYTES]
         [--reconnect-timeout SECONDS] 'JSON payload'

  --url defaults to $LEVERET_URL, else amqp://localhost:5672/
  (prefer LEVERET_URL to --url: a command line is visible to other users).
  The message starts a new trace, unless --header traceparent=00-... names
  its parent. Prints the message id once the broker has confirmed the message.`;

class UsageError extends Error {}

function parse(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: "string" },
        exchange: { type: "string" },
        "routing-key": { type: "string" },
        type: { type: "string" },
        version: { type: "string" },
        "message-id": { type: "string" },
        "correlation-id": { type: "string" },
        "app-id": { type: "string" },
        header: { type: "string", multiple: true },
        schemas: { type: "string" },
        "max-size": { type: "string" },
        "reconnect-timeout": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    throw new UsageError(err.message);
  }
  const { values, positionals } = parsed;
  if (values.help) return { help: true };
  for (const name of ["exchange", "routing-key", "type", "version"]) {
    if (values[name] === undefined) throw new UsageError(`--${name} is required`);
  }
  if (positionals.length !== 1) throw new UsageError(`expected one JSON payload argument, got ${positionals.length}`);
  const integer = (name, raw, min) => {
    const n = Number(raw);
    if (raw.trim() === "" || !Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
    return n;
  };
  let payload;
  try {
    payload = JSON.parse(positionals[0]);
  } catch (err) {
    throw new UsageError(`the payload is not JSON: ${err.message}`);
  }
  const headers = {};
  for (const item of values.header ?? []) {
    const eq = item.indexOf("=");
    if (eq < 1) throw new UsageError(`--header takes NAME=VALUE, got ${JSON.stringify(item)}`);
    headers[item.slice(0, eq)] = item.slice(eq + 1);
  }
  const reconnect = values["reconnect-timeout"];
  const seconds = reconnect === undefined ? RECONNECT_TIMEOUT_MS / 1000 : Number(reconnect);
  if (!Number.isFinite(seconds) || seconds < 0) throw new UsageError(`--reconnect-timeout must be a number of seconds, got ${JSON.stringify(reconnect)}`);
  return {
    url: values.url ?? (process.env.LEVERET_URL || undefined),
    schemas: values.schemas,
    appId: values["app-id"],
    maxSize: values["max-size"] === undefined ? undefined : integer("max-size", values["max-size"], 1),
    reconnectTimeoutMs: seconds * 1000,
    type: values.type,
    version: integer("version", values.version, 1),
    payload,
    options: {
      exchange: values.exchange,
      routingKey: values["routing-key"],
      messageId: values["message-id"],
      correlationId: values["correlation-id"],
      headers,
    },
  };
}

let urlInUse = null;

async function main(argv) {
  const args = parse(argv);
  urlInUse = args.url ?? "";
  if (args.help) {
    console.log(USAGE);
    return;
  }
  const publisher = new Publisher({
    url: args.url,
    schemas: args.schemas,
    appId: args.appId,
    maxSize: args.maxSize,
    reconnectTimeoutMs: args.reconnectTimeoutMs,
    log: null, // one line on failure, nothing else
  });
  try {
    console.log(await publisher.publish(args.type, args.version, args.payload, args.options));
  } finally {
    await publisher.close();
  }
}

try {
  await main(process.argv.slice(2));
} catch (err) {
  let text = String(err?.message ?? err).replace(/\s*\n\s*/g, " ");
  // Never print a password: mask that of the URL in use (of any URL given, before the options are parsed).
  const urls = urlInUse ? [urlInUse] : [process.env.LEVERET_URL ?? "", ...process.argv.map((a) => a.replace(/^--url=/, ""))];
  for (const url of urls) if (/^amqps?:\/\//i.test(url)) text = scrub(text, url);
  console.error(`${PROG}: ${text}${err instanceof UsageError ? " (see --help)" : ""}`);
  process.exitCode = err instanceof UsageError ? 2 : 1;
}
