// How amqplib puts our header values on the wire. Its field-table encoder is
// internal (not in the package's exports), so it is loaded by file path here.
//
// A plain JS number becomes the smallest signed integer type that holds it
// (1 -> 'b', a signed byte) or a double ('d') if it has a fraction; the
// {"!": "int"} form used by wire.amqpInt pins a signed 32-bit 'I', as pika does.

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { H, amqpInt, failure, toDelivery } from "../src/wire.js";

const require = createRequire(import.meta.url);
const codec = require(fileURLToPath(new URL("../node_modules/amqplib/lib/codec.js", import.meta.url)));

/** The type tag of each top-level field of an encoded table. */
function tags(table) {
  const buffer = Buffer.alloc(65536);
  const length = codec.encodeTable(buffer, table, 0);
  const out = {};
  let offset = 4;
  while (offset < length) {
    const keyLength = buffer[offset];
    const key = buffer.toString("utf8", offset + 1, offset + 1 + keyLength);
    offset += 1 + keyLength;
    const tag = String.fromCharCode(buffer[offset]);
    out[key] = tag;
    offset += 1;
    const fixed = { b: 1, B: 1, t: 1, s: 2, u: 2, I: 4, i: 4, f: 4, l: 8, d: 8, T: 8, D: 5, V: 0 };
    offset += tag in fixed ? fixed[tag] : 4 + buffer.readUInt32BE(offset);
  }
  return out;
}

describe("amqplib's encoding of header values", () => {
  it("plain numbers: smallest signed integer, or double", () => {
    assert.deepEqual(tags({ a: 1, b: 300, c: 70_000, d: 1.5 }), { a: "b", b: "s", c: "I", d: "d" });
  });

  it("amqpInt: a signed 32-bit integer", () => {
    assert.deepEqual(tags({ n: amqpInt(3), big: amqpInt(2 ** 40) }), { n: "I", big: "l" });
  });

  it("a copy carries leveret-retry-count and leveret-version as 'I', the text headers as 'S'", () => {
    const msg = {
      content: Buffer.from("{}"),
      fields: { exchange: "ex", routingKey: "rk" },
      properties: { messageId: "m", type: "t", contentType: "application/json", headers: { [H.VERSION]: 1, [H.RETRY_COUNT]: 2 } },
    };
    const copy = failure(toDelivery(msg), "q", new Error("x"), { consumer: "q@h:1" });
    const encoded = tags(copy.headers);
    assert.equal(encoded[H.RETRY_COUNT], "I");
    assert.equal(encoded[H.VERSION], "I");
    for (const name of [H.REASON, H.ERROR_MESSAGE, H.LAST_FAILED_AT, H.ORIGINAL_EXCHANGE]) assert.equal(encoded[name], "S", name);
  });
});
