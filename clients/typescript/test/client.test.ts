/** CacheClient against a real cachesvc server (the repository's Python server on 127.0.0.1, the real model). */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, describe, it } from "node:test";

import {
  CacheClient,
  CacheClientError,
  contextKey,
  DeadlineExceeded,
  InvalidArgument,
  NotFoundError,
  Unauthenticated,
  Unavailable,
} from "../src/index.js";
import { closedPort, PYTHON, REPO_ROOT, startServer, startSilentServer, type RunningServer } from "./server.js";

describe("CacheClient against a real server", () => {
  let server: RunningServer;
  let cache: CacheClient;

  before(async () => {
    server = await startServer();
    cache = new CacheClient(server.target);
  });
  after(async () => {
    cache.close();
    await server.stop();
  });

  it("stores, then serves the same prompt exactly and a paraphrase semantically", async () => {
    const scope = { namespace: "rt", model: "gpt-x", context: contextKey({ systemPrompt: "Be brief." }) };
    const stored = await cache.store("How do I cancel my subscription?", "Settings > Billing > Cancel.", {
      scope,
      metadata: { source: "ts" },
      ttlSeconds: 3600,
    });
    assert.equal(stored.replaced, false);
    assert.ok(stored.expiresAt instanceof Date && stored.expiresAt.getTime() > Date.now());

    const exact = await cache.lookup("How do I cancel my subscription?", { scope });
    assert.equal(exact.hit, true);
    assert.equal(exact.exact, true);
    assert.equal(exact.similarity, 1);
    assert.equal(exact.completion, "Settings > Billing > Cancel.");
    assert.equal(exact.entry?.id, stored.id);
    assert.deepEqual(exact.entry?.metadata, { source: "ts" });
    assert.equal(exact.nearestId, stored.id);

    const semantic = await cache.lookup("How can I cancel my subscription?", { scope, explain: true });
    assert.equal(semantic.hit, true);
    assert.equal(semantic.exact, false);
    assert.ok(semantic.similarity > 0.9 && semantic.similarity < 1, String(semantic.similarity));
    assert.ok(semantic.similarity >= semantic.minSimilarity);
    assert.equal(semantic.entry?.id, stored.id);
    assert.equal(semantic.entry?.hitCount, 2);
    assert.ok(semantic.timings.totalMs > 0);
    // A prompt new to the server goes through the model's queue, however briefly.
    assert.ok(semantic.timings.queueMs > 0 && semantic.timings.queueMs < semantic.timings.embedMs);
    assert.equal(semantic.candidates[0]?.entryId, stored.id);
    assert.equal(semantic.candidates[0]?.outcome, "SERVED");

    const replaced = await cache.store("How do I cancel my subscription?", "Account > Cancel.", { scope });
    assert.equal(replaced.replaced, true);
    assert.equal(replaced.expiresAt, null);
  });

  it("misses outside the scope and reports the best similarity and threshold on a miss", async () => {
    const scope = { namespace: "miss", model: "gpt-x" };
    await cache.store("What is the capital of France?", "Paris.", { scope });
    const otherModel = await cache.lookup("What is the capital of France?", { scope: { ...scope, model: "gpt-y" } });
    assert.equal(otherModel.hit, false);
    assert.equal(otherModel.entry, null);
    assert.equal(otherModel.completion, null);
    assert.equal(otherModel.nearestId, null);
    assert.equal(otherModel.similarity, 0);

    const unrelated = await cache.lookup("Recommend a good pasta recipe", { scope, minSimilarity: 0.9, explain: true });
    assert.equal(unrelated.hit, false);
    assert.equal(unrelated.minSimilarity, 0.9);
    assert.ok(unrelated.similarity > 0 && unrelated.similarity < 0.9, String(unrelated.similarity));
    assert.notEqual(unrelated.nearestId, null);
    assert.equal(unrelated.candidates[0]?.outcome, "BELOW_THRESHOLD");
  });

  it("deletes one entry, then a scope, and counts per namespace", async () => {
    const scope = { namespace: "del", model: "m" };
    const first = await cache.store("first prompt about apples", "a", { scope });
    await cache.store("second prompt about pears", "b", { scope });
    await cache.store("third prompt about plums", "c", { scope: { ...scope, model: "other" } });
    assert.equal(await cache.delete(first.id), 1);
    await assert.rejects(cache.delete(first.id), NotFoundError);
    assert.equal((await cache.lookup("first prompt about apples", { scope, minSimilarity: 0.99 })).hit, false);
    assert.equal(await cache.deleteScope("del", { model: "m" }), 1);
    assert.equal(await cache.deleteScope("del"), 1);

    const stats = await cache.stats({ namespace: "del" });
    assert.equal(stats.namespaces.length, 1);
    const del = stats.namespaces[0];
    assert.equal(del?.namespace, "del");
    assert.equal(del?.stores, 3);
    assert.equal(del?.lookups, 1);
    assert.equal(del?.hits, 0);
    assert.equal(del?.entries, 0);
    const all = await cache.stats();
    assert.ok(all.namespaces.some((ns) => ns.namespace === "rt"));
    assert.ok(all.total.stores >= 6);
  });

  it("maps status codes to typed errors", async () => {
    const empty = await cache.lookup("   ").catch((error: unknown) => error);
    assert.ok(empty instanceof InvalidArgument);
    assert.equal(empty.status, "INVALID_ARGUMENT");
    assert.match(empty.details, /prompt/);
    assert.equal(empty.retryable, false);

    const feedback = await cache.feedback("q", "some-id", true).catch((error: unknown) => error);
    assert.ok(feedback instanceof NotFoundError, String(feedback));
    assert.ok(feedback instanceof CacheClientError);
  });

  it("validates arguments before sending anything", async () => {
    await assert.rejects(cache.lookup("q", { minSimilarity: 1.5 }), RangeError);
    await assert.rejects(cache.lookup("q", { minSimilarity: Number.NaN }), RangeError);
    await assert.rejects(cache.store("q", "a", { ttlSeconds: -1 }), RangeError);
    await assert.rejects(cache.store("q", "a", { ttlSeconds: 1.5 }), TypeError);
    await assert.rejects(cache.store("q", "a", { usage: { promptTokens: -1, completionTokens: 0 } }), RangeError);
    await assert.rejects(cache.lookup("q", { timeoutMs: 0 }), RangeError);
    await assert.rejects(cache.delete(""), RangeError);
    await assert.rejects(cache.lookup("q", { fillWaitMs: 100 }), RangeError);
    await assert.rejects(cache.lookup("q", { fillLeaseMs: 0 }), RangeError);
    await assert.rejects(cache.releaseFill("q", ""), RangeError);
    assert.throws(() => new CacheClient(server.target, { apiKey: "" }), RangeError);
  });

  it("takes a fill lease on a miss, tells others it is pending, and ends it on release or store", async () => {
    const scope = { namespace: "fill", model: "m" };
    const first = await cache.lookup("Who fills this?", { scope, fillLeaseMs: 10_000 });
    assert.equal(first.hit, false);
    assert.ok(first.fillToken !== null);
    const second = await cache.lookup("Who fills this?", { scope, fillLeaseMs: 10_000 });
    assert.equal(second.fillPending, true);
    assert.equal(second.fillToken, null);
    assert.equal(await cache.releaseFill("Who fills this?", first.fillToken, { scope }), true);
    assert.equal(await cache.releaseFill("Who fills this?", first.fillToken, { scope }), false);
    const third = await cache.lookup("Who fills this?", { scope, fillLeaseMs: 10_000 });
    assert.ok(third.fillToken !== null && !third.fillPending);
    await cache.store("Who fills this?", "The first caller.", { scope });
    const waited = await cache.lookup("Who fills this?", { scope, fillLeaseMs: 10_000, fillWaitMs: 10_000 });
    assert.equal(waited.hit, true);
    assert.equal(waited.fillToken, null);
    assert.equal(await cache.releaseFill("Who fills this?", third.fillToken, { scope }), false);
  });

  it("serves an entry the Python client stored, under the same context key", async () => {
    const systemPrompt = "Réponds brièvement. 🙂";
    const params = { temperature: 0.2, max_tokens: 100, stop: ["\n\n"], top_p: 1.0 };
    const messages = [{ role: "user", content: "Earlier" }, { role: "assistant", content: "Yes?" }];
    const script = `
import json, sys
from cachesvc_client import CacheClient, Scope, context_key
args = json.loads(sys.argv[1])
key = context_key(system_prompt=args["system_prompt"], params=args["params"], messages=args["messages"])
with CacheClient(args["target"]) as cache:
    stored = cache.store("What is the boiling point of water?", "100 °C at sea level.",
                         scope=Scope(namespace="py", model="gpt-x", context=key))
print(json.dumps({"id": stored.id, "key": key}))
`;
    const input = JSON.stringify({ target: server.target, system_prompt: systemPrompt, params, messages });
    const output = execFileSync(PYTHON, ["-c", script, input], { cwd: REPO_ROOT, encoding: "utf8" });
    const fromPython = JSON.parse(output) as { id: string; key: string };

    const key = contextKey({ systemPrompt, params, messages });
    assert.equal(key, fromPython.key);
    const found = await cache.lookup("What is the boiling point of water?", {
      scope: { namespace: "py", model: "gpt-x", context: key },
    });
    assert.equal(found.hit, true);
    assert.equal(found.entry?.id, fromPython.id);
    assert.equal(found.completion, "100 °C at sea level.");
  });

  it("stores an entry the Python client then serves, under the same context key", async () => {
    const params = { temperature: 0, tools: [{ type: "function", function: { name: "f", parameters: {} } }] };
    const key = contextKey({ params });
    const stored = await cache.store("Who wrote Les Misérables?", "Victor Hugo.", {
      scope: { namespace: "ts", model: "gpt-x", context: key },
    });
    const script = `
import json, sys
from cachesvc_client import CacheClient, Scope, context_key
args = json.loads(sys.argv[1])
with CacheClient(args["target"]) as cache:
    found = cache.lookup("Who wrote Les Misérables?",
                         scope=Scope(namespace="ts", model="gpt-x", context=context_key(params=args["params"])))
print(json.dumps({"hit": found.hit, "id": found.entry.id if found.entry else None}))
`;
    const output = execFileSync(PYTHON, ["-c", script, JSON.stringify({ target: server.target, params })], {
      cwd: REPO_ROOT,
      encoding: "utf8",
    });
    assert.deepEqual(JSON.parse(output), { hit: true, id: stored.id });
  });
});

describe("CacheClient with API keys", () => {
  let server: RunningServer;

  before(async () => {
    server = await startServer(["--api-keys", "team-a=secret-a,team-b=secret-b"]);
  });
  after(async () => {
    await server.stop();
  });

  it("sends the key as a bearer token; the key decides the tenant", async () => {
    const anonymous = new CacheClient(server.target);
    const wrong = new CacheClient(server.target, { apiKey: "nope" });
    const teamA = new CacheClient(server.target, { apiKey: "secret-a" });
    const teamB = new CacheClient(server.target, { apiKey: "secret-b" });
    try {
      const missing = await anonymous.lookup("hello").catch((error: unknown) => error);
      assert.ok(missing instanceof Unauthenticated, String(missing));
      assert.equal(missing.status, "UNAUTHENTICATED");
      await assert.rejects(wrong.stats(), Unauthenticated);

      await teamA.store("What is our refund policy?", "30 days.", { scope: { namespace: "shop" } });
      assert.equal((await teamA.lookup("What is our refund policy?", { scope: { namespace: "shop" } })).hit, true);
      assert.equal((await teamB.lookup("What is our refund policy?", { scope: { namespace: "shop" } })).hit, false);
      assert.equal((await teamB.stats()).total.entries, 0);
      assert.equal((await teamA.stats()).total.entries, 1);
    } finally {
      for (const client of [anonymous, wrong, teamA, teamB]) {
        client.close();
      }
    }
  });
});

describe("CacheClient deadlines and an unreachable server", () => {
  it("ends a call at its deadline when the server never answers", async () => {
    const silent = await startSilentServer();
    const cache = new CacheClient(silent.target, { timeoutMs: 10_000 });
    try {
      const error = await cache.lookup("anything", { timeoutMs: 150 }).catch((caught: unknown) => caught);
      assert.ok(error instanceof DeadlineExceeded, String(error));
      assert.equal(error.status, "DEADLINE_EXCEEDED");
    } finally {
      cache.close();
      await silent.close();
    }
  });

  it("reports a refused connection as Unavailable (retryable)", async () => {
    const cache = new CacheClient(await closedPort());
    try {
      const error = await cache.stats().catch((caught: unknown) => caught);
      assert.ok(error instanceof Unavailable, String(error));
      assert.equal(error.retryable, true);
    } finally {
      cache.close();
    }
  });

  it("refuses calls once closed", async () => {
    const cache = new CacheClient(await closedPort());
    cache.close();
    assert.equal(cache.state, "closed");
    await assert.rejects(cache.stats(), /closed/);
  });
});
