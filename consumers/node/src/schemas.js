// The JSON Schema files of schemas/, keyed by (x-leveret-type, x-leveret-version).

import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import Ajv from "ajv"; // ajv v8's default export validates draft-07

export const TYPE_KEY = "x-leveret-type";
export const VERSION_KEY = "x-leveret-version";

export class SchemaError extends Error {
  name = "SchemaError";
}

/**
 * Every schema in a folder, compiled. `validate(type, version, value)`
 * returns null for a valid value, else a short description of what is wrong.
 */
export class Schemas {
  #validators = new Map();

  constructor() {
    // Strict mode stays on: the two annotations are declared as keywords.
    // useDefaults fills in the schema's defaults, as leveret's Python models do.
    // `format` is an annotation in draft-07 (asserting it is optional), and
    // ajv alone knows no formats: strict mode would refuse a schema with
    // "format": "date-time" (pydantic writes it), so formats are not checked;
    // leveret's schemas pair such a format with a `pattern`, which is.
    this.ajv = new Ajv({ allErrors: false, useDefaults: true, validateFormats: false });
    this.ajv.addKeyword(TYPE_KEY);
    this.ajv.addKeyword(VERSION_KEY);
  }

  static load(dir) {
    const schemas = new Schemas();
    let files;
    try {
      files = readdirSync(dir).filter((f) => f.endsWith(".json")).sort();
    } catch (err) {
      throw new SchemaError(`cannot read the schema folder ${dir}: ${err.message}`);
    }
    if (files.length === 0) throw new SchemaError(`no schema files (*.json) in ${dir}`);
    for (const file of files) {
      let schema;
      try {
        schema = JSON.parse(readFileSync(join(dir, file), "utf8"));
      } catch (err) {
        throw new SchemaError(`${file}: ${err.message}`);
      }
      schemas.add(schema, file);
    }
    return schemas;
  }

  add(schema, origin = "schema") {
    const type = schema[TYPE_KEY];
    const version = schema[VERSION_KEY];
    if (typeof type !== "string" || !Number.isInteger(version)) {
      throw new SchemaError(`${origin}: needs ${TYPE_KEY} (a string) and ${VERSION_KEY} (an integer)`);
    }
    const key = keyOf(type, version);
    if (this.#validators.has(key)) throw new SchemaError(`${origin}: a second schema for ${type} v${version}`);
    try {
      this.#validators.set(key, this.ajv.compile(schema));
    } catch (err) {
      throw new SchemaError(`${origin}: ${err.message}`);
    }
  }

  has(type, version) {
    return this.#validators.has(keyOf(type, version));
  }

  /** Versions known for a type, ascending. */
  versions(type) {
    return [...this.#validators.keys()]
      .filter((k) => k.startsWith(`${type}@`))
      .map((k) => Number(k.slice(type.length + 1)))
      .sort((a, b) => a - b);
  }

  validate(type, version, value) {
    const check = this.#validators.get(keyOf(type, version));
    if (!check) return `no schema for ${type} v${version}`;
    if (check(value)) return null;
    return this.ajv.errorsText(check.errors, { dataVar: "body" });
  }
}

const keyOf = (type, version) => `${type}@${version}`;
