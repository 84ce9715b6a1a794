// Usage: node validate.mjs PATH/TO/asyncapi.json
// Parses the document with the AsyncAPI parser (resolving the $refs to
// schemas/*.json) and prints each diagnostic; exits 1 on any error.
import { resolve } from "node:path";
import { Parser, fromFile } from "@asyncapi/parser";

const path = resolve(process.argv[2] ?? "../../asyncapi.json");
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  console.log(`${["error", "warning", "info", "hint"][d.severity]} ${d.code}: ${d.message} at ${d.path.join(".")}`);
}
if (!document || errors.length) {
  console.log(`invalid: ${errors.length} error(s)`);
  process.exit(1);
}
const messages = document.allMessages().all().map((m) => m.id());
console.log(`valid: ${messages.length} messages: ${messages.join(", ")}`);
