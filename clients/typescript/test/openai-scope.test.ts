/**
 * cacheableRequest gives the Python wrapper's results for the shared request vectors
 * (clients/openai_scope_vectors.json, written by scripts/gen_openai_scope_vectors.py from the Python mapping).
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";

import { cacheableRequest } from "../src/openai.js";
import { REPO_ROOT } from "./server.js";

interface Vector {
  readonly name: string;
  readonly request: Record<string, unknown>;
  readonly expected:
    | { readonly cacheable: false }
    | { readonly cacheable: true; readonly prompt: string; readonly model: string; readonly context: string };
}

const file = JSON.parse(readFileSync(path.join(REPO_ROOT, "clients/openai_scope_vectors.json"), "utf8")) as {
  namespace: string;
  vectors: Vector[];
};

describe("cacheableRequest: the shared request vectors", () => {
  assert.ok(file.vectors.length >= 20);
  for (const vector of file.vectors) {
    it(vector.name, () => {
      const result = cacheableRequest(vector.request, file.namespace);
      if (!vector.expected.cacheable) {
        assert.equal(result, null);
        return;
      }
      assert.deepEqual(result, {
        prompt: vector.expected.prompt,
        scope: { namespace: file.namespace, model: vector.expected.model, context: vector.expected.context },
      });
    });
  }

  it("treats undefined like null and omitted", () => {
    const vector = file.vectors.find((v) => v.name === "null parameters are omitted");
    assert.ok(vector?.expected.cacheable);
    const withUndefined = { ...vector.request, top_p: undefined, seed: undefined, stop: undefined };
    assert.equal(cacheableRequest(withUndefined, file.namespace)?.scope.context, vector.expected.context);
  });
});
