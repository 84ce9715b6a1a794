// Validation decisions against the repository's real schema files.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_SCHEMAS } from "../src/config.js";
import { SchemaError, Schemas } from "../src/schemas.js";

const schemas = Schemas.load(DEFAULT_SCHEMAS);

describe("Schemas", () => {
  it("keys every file by x-leveret-type and x-leveret-version", () => {
    assert.deepEqual(schemas.versions("demo.export"), [1, 2]);
    assert.ok(schemas.has("leveret.conformance", 1));
    assert.ok(schemas.has("leveret.conformance.receipt", 1));
    assert.ok(!schemas.has("leveret.conformance", 2));
  });

  it("is strict: a string is not a number, a boolean is not an integer", () => {
    assert.equal(schemas.validate("leveret.conformance", 1, { fail_times: 1 }), null);
    assert.match(schemas.validate("leveret.conformance", 1, { fail_times: "1" }), /fail_times must be integer/);
    assert.match(schemas.validate("leveret.conformance", 1, { fail_times: true }), /must be integer/);
    assert.match(schemas.validate("demo.export", 1, { user_id: 0 }), /user_id must be >= 1/);
  });

  it("rejects a JSON value other than an object", () => {
    for (const value of [[], "x", 1, null]) {
      assert.match(schemas.validate("leveret.conformance", 1, value), /must be object/);
    }
  });

  it("ignores fields the schema does not name, and fills in defaults", () => {
    const task = { fail_times: 2, extra: "kept" };
    assert.equal(schemas.validate("leveret.conformance", 1, task), null);
    assert.deepEqual(task, {
      fail_times: 2,
      extra: "kept",
      sleep_ms: 0,
      note: null,
      receipt_exchange: null,
      receipt_routing_key: null,
    });
  });

  it("says so for an unknown type or version", () => {
    assert.match(schemas.validate("demo.export", 9, {}), /no schema for demo.export v9/);
  });

  it("takes `format` as an annotation (pydantic writes date-time): the pattern beside it is checked", () => {
    const s = new Schemas();
    const pattern = "^\\d{4}-\\d{2}-\\d{2}T";
    s.add({ type: "object", properties: { at: { type: "string", format: "date-time", pattern } }, "x-leveret-type": "f", "x-leveret-version": 1 });
    assert.equal(s.validate("f", 1, { at: "2026-01-02T03:04:05.123+00:00" }), null);
    assert.match(s.validate("f", 1, { at: "yesterday" }), /must match pattern/);
  });

  it("refuses a file without the annotations, or a duplicate", () => {
    const s = new Schemas();
    assert.throws(() => s.add({ type: "object" }, "bare.json"), SchemaError);
    s.add({ type: "object", "x-leveret-type": "a", "x-leveret-version": 1 });
    assert.throws(() => s.add({ type: "object", "x-leveret-type": "a", "x-leveret-version": 1 }), SchemaError);
  });
});
