/** contextKey gives the Python client's keys (the shared vectors) and refuses what has no canonical form. */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";

import { canonicalJson, pythonFloatRepr } from "../src/context-key.js";
import { contextKey, type ContextKeyInput, type ContextValue } from "../src/index.js";
import { REPO_ROOT } from "./server.js";

interface Vector {
  readonly name: string;
  readonly input: { system_prompt?: string; params?: Record<string, unknown>; messages?: Record<string, unknown>[] };
  readonly key: string;
}

/** Undoes the file's encoding of integers past 2^53 ({"$int": "<digits>"}) into bigints. */
function decode(value: unknown): unknown {
  if (Array.isArray(value)) {
    return value.map(decode);
  }
  if (typeof value === "object" && value !== null) {
    const entries = Object.entries(value);
    if (entries.length === 1 && entries[0]?.[0] === "$int") {
      return BigInt(entries[0][1] as string);
    }
    return Object.fromEntries(entries.map(([key, item]) => [key, decode(item)]));
  }
  return value;
}

const file = JSON.parse(readFileSync(path.join(REPO_ROOT, "clients/context_key_vectors.json"), "utf8")) as {
  vectors: Vector[];
};

describe("contextKey: the shared vectors (clients/context_key_vectors.json, written by the Python client)", () => {
  assert.ok(file.vectors.length >= 20);
  for (const vector of file.vectors) {
    it(vector.name, () => {
      const input: ContextKeyInput = {
        ...(vector.input.system_prompt === undefined ? {} : { systemPrompt: vector.input.system_prompt }),
        ...(vector.input.params === undefined ? {} : { params: decode(vector.input.params) as Record<string, ContextValue> }),
        ...(vector.input.messages === undefined ? {} : { messages: decode(vector.input.messages) as Record<string, ContextValue>[] }),
      };
      assert.equal(contextKey(input), vector.key);
    });
  }
});

describe("contextKey: canonical form", () => {
  it("writes floats as Python's repr does", () => {
    const cases: [number, string][] = [
      [0.1, "0.1"], [1e-7, "1e-07"], [1.5e-5, "1.5e-05"], [1e-4, "0.0001"], [0.00012, "0.00012"],
      [123.456, "123.456"], [-2.5, "-2.5"], [5e-324, "5e-324"], [0.1 + 0.2, "0.30000000000000004"],
      [1000000000000000.1, "1000000000000000.1"], [-1.25e-10, "-1.25e-10"],
    ];
    for (const [value, text] of cases) {
      assert.equal(pythonFloatRepr(value), text);
    }
  });

  it("writes integral numbers as integers with every digit", () => {
    assert.equal(canonicalJson(1e22), "10000000000000000000000");
    assert.equal(canonicalJson(-0), "0");
    assert.equal(canonicalJson(2 ** 60), "1152921504606846976");
    assert.equal(canonicalJson(18446744073709551616n), "18446744073709551616");
  });

  it("sorts keys by code point, not UTF-16 unit", () => {
    assert.equal(canonicalJson({ "\u{1F600}": 1, "\uE000": 2 }), '{"\uE000":2,"\u{1F600}":1}');
  });

  it("tells booleans from numbers and leaves out undefined properties", () => {
    assert.notEqual(contextKey({ params: { a: true } }), contextKey({ params: { a: 1 } }));
    assert.equal(contextKey({ params: { a: 1, b: undefined } }), contextKey({ params: { a: 1.0 } }));
    assert.equal(contextKey({ params: { b: undefined } }), contextKey({}));
    assert.equal(contextKey({ systemPrompt: null, params: null, messages: null }), contextKey({}));
  });

  it("refuses values without a canonical form", () => {
    assert.throws(() => contextKey({ params: { t: Number.NaN } }), RangeError);
    assert.throws(() => contextKey({ params: { t: Number.POSITIVE_INFINITY } }), RangeError);
    assert.throws(() => contextKey({ params: { d: new Date() as unknown as ContextValue } }), TypeError);
    assert.throws(() => contextKey({ params: { m: new Map() as unknown as ContextValue } }), TypeError);
    assert.throws(() => contextKey({ params: { f: (() => 1) as unknown as ContextValue } }), TypeError);
    assert.throws(() => contextKey({ params: { a: [undefined] as unknown as ContextValue } }), TypeError);
    assert.throws(() => contextKey({ systemPrompt: "\uD800 lone" }), TypeError);
    assert.throws(() => contextKey({ messages: "hi" as unknown as [] }), TypeError);
  });
});
