/** cachedOpenAI: the real `openai` SDK against a local stub LLM, with a real cachesvc server as the cache. */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";

import OpenAI from "openai";
import { ChatCompletionStream } from "openai/lib/ChatCompletionStream";
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionMessageParam,
} from "openai/resources/chat/completions";
import { Stream } from "openai/streaming";

import { CacheClient, contextKey, Unavailable, type LookupOptions, type StoreOptions } from "../src/index.js";
import { cacheableRequest, cacheInfo, cachedOpenAI, type CachedOpenAIOptions, type SupportsCache } from "../src/openai.js";
import { startStub, type Stub } from "./openai-stub.js";
import { closedPort, PYTHON, REPO_ROOT, startServer, startSilentServer, type RunningServer } from "./server.js";

const SYSTEM: ChatCompletionMessageParam = { role: "system", content: "You are a terse assistant." };

function ask(text: string, system: ChatCompletionMessageParam = SYSTEM): ChatCompletionMessageParam[] {
  return [system, { role: "user", content: text }];
}

async function collect(stream: AsyncIterable<ChatCompletionChunk>, limit = Infinity): Promise<ChatCompletionChunk[]> {
  const chunks: ChatCompletionChunk[] = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    if (chunks.length >= limit) {
      break;
    }
  }
  return chunks;
}

describe("cachedOpenAI", () => {
  let server: RunningServer;
  let stub: Stub;
  let cache: CacheClient;
  let namespaceCount = 0;

  /** A wrapped client on its own namespace, with a lookup deadline generous enough for a busy test machine. */
  function wrapped(options: Partial<CachedOpenAIOptions> = {}) {
    namespaceCount += 1;
    const openai = new OpenAI({ apiKey: "test-key", baseURL: stub.baseURL, maxRetries: 0 });
    return cachedOpenAI(openai, { cache, namespace: `ns-${namespaceCount}`, lookupTimeoutMs: 5000, ...options });
  }

  before(async () => {
    [server, stub] = await Promise.all([startServer(), startStub()]);
    cache = new CacheClient(server.target);
  });
  after(async () => {
    cache.close();
    await Promise.all([server.stop(), stub.close()]);
  });

  it("calls the LLM on a miss, stores the answer, and serves it on the next ask", async () => {
    const client = wrapped();
    const before = stub.requests.length;
    const first = await client.chat.completions.create({ model: "gpt-test", messages: ask("How do I reset my password?") });
    assert.equal(first.choices[0]?.message.content, "Answer to: How do I reset my password?");
    assert.equal(cacheInfo(first)?.outcome, "miss");
    await client.cachesvc.flush();

    const second = await client.chat.completions.create({ model: "gpt-test", messages: ask("How do I reset my password?") });
    assert.equal(stub.requests.length, before + 1);
    const info = cacheInfo(second);
    assert.equal(info?.outcome, "hit");
    assert.equal(info?.exact, true);
    assert.equal(info?.similarity, 1);
    assert.equal(second.id, `chatcmpl-cache-${info?.entryId}`);
    assert.equal(second.object, "chat.completion");
    assert.equal(second.model, "gpt-test-2025-01-01");
    assert.equal(second.choices[0]?.message.content, first.choices[0]?.message.content);
    assert.equal(second.choices[0]?.finish_reason, "stop");
    assert.deepEqual(second.usage, { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 });

    const paraphrase = await client.chat.completions.create({ model: "gpt-test", messages: ask("How can I reset my password?") });
    assert.equal(stub.requests.length, before + 1);
    assert.equal(cacheInfo(paraphrase)?.outcome, "hit");
    assert.equal(cacheInfo(paraphrase)?.entryId, info?.entryId);
    assert.ok((cacheInfo(paraphrase)?.similarity ?? 1) < 1);
    assert.deepEqual(client.cachesvc.counters(), {
      hits: 2, misses: 1, uncacheable: 0, bypassed: 0, errors: 0, stores: 1, skippedStores: 0,
    });
  });

  it("misses for another system prompt, temperature or model; parameter order does not matter", async () => {
    const client = wrapped();
    const question = "What is the capital of Australia?";
    await client.chat.completions.create({ model: "gpt-test", messages: ask(question), temperature: 0, max_tokens: 50 });
    await client.cachesvc.flush();
    const before = stub.requests.length;

    const sameOtherOrder = await client.chat.completions.create({ max_tokens: 50, temperature: 0, messages: ask(question), model: "gpt-test", user: "u-1" });
    assert.equal(cacheInfo(sameOtherOrder)?.outcome, "hit");
    const otherSystem = await client.chat.completions.create({
      model: "gpt-test", messages: ask(question, { role: "system", content: "Answer in French." }), temperature: 0, max_tokens: 50,
    });
    assert.equal(cacheInfo(otherSystem)?.outcome, "miss");
    const otherTemperature = await client.chat.completions.create({ model: "gpt-test", messages: ask(question), temperature: 0.5, max_tokens: 50 });
    assert.equal(cacheInfo(otherTemperature)?.outcome, "miss");
    const otherModel = await client.chat.completions.create({ model: "gpt-other", messages: ask(question), temperature: 0, max_tokens: 50 });
    assert.equal(cacheInfo(otherModel)?.outcome, "miss");
    assert.equal(stub.requests.length, before + 3);
  });

  it("serves what the Python wrapper cached and the other way round (same request, each SDK's spelling)", async () => {
    // The Python child runs its LLM calls against this process's stub, so it must not block the event loop.
    const script = `
import json, sys
from openai import OpenAI
from cachesvc_client import CacheClient
from cachesvc_client.openai import CachedOpenAI, cache_info
args = json.loads(sys.argv[1])
with CacheClient(args["target"]) as cache:
    llm = CachedOpenAI(OpenAI(base_url=args["base_url"], api_key="test", max_retries=0), cache=cache,
                       namespace=args["namespace"], lookup_timeout=10.0)
    reply = llm.chat.completions.create(**args["request"])
    info = cache_info(reply)
    print(json.dumps({"outcome": info.outcome.value, "entry_id": info.entry_id}))
`;
    const client = wrapped();
    const namespace = `ns-${namespaceCount}`;
    const python = async (request: object): Promise<{ outcome: string; entry_id: string | null }> => {
      const input = JSON.stringify({ target: server.target, base_url: stub.baseURL, namespace, request });
      const { stdout } = await promisify(execFile)(PYTHON, ["-c", script, input], { cwd: REPO_ROOT, encoding: "utf8" });
      return JSON.parse(stdout) as { outcome: string; entry_id: string | null };
    };
    const prefix = (question: string, nulls: boolean) => [
      SYSTEM,
      { role: "user", content: "Hi", ...(nulls ? { name: null } : {}) },
      { role: "assistant", content: "Hello! How can I help?", ...(nulls ? { refusal: null, tool_calls: null } : {}) },
      { role: "user", content: [{ type: "text", text: question }] },
    ];
    // Python passes unknown body fields in extra_body and request options beside them; TypeScript in the body.
    const pythonRequest = (question: string) => ({
      model: "gpt-test", messages: prefix(question, true), temperature: 0.1, extra_body: { top_k: 40 }, user: "u-py", timeout: 30,
    });
    const typescriptRequest = (question: string) => ({
      model: "gpt-test", messages: prefix(question, false), temperature: 0.1, top_k: 40,
    }) as unknown as ChatCompletionCreateParamsNonStreaming;

    const before = stub.requests.length;
    const stored = await python(pythonRequest("How long does a refund take?"));
    assert.equal(stored.outcome, "miss");
    const hit = await client.chat.completions.create(typescriptRequest("How long does a refund take?"));
    assert.equal(cacheInfo(hit)?.outcome, "hit");
    assert.equal(cacheInfo(hit)?.entryId, stored.entry_id);

    const miss = await client.chat.completions.create(typescriptRequest("Can I change my delivery address?"));
    assert.equal(cacheInfo(miss)?.outcome, "miss");
    await client.cachesvc.flush();
    assert.equal((await python(pythonRequest("Can I change my delivery address?"))).outcome, "hit");
    assert.equal(stub.requests.length, before + 2);
  });

  it("leaves every other part of the client as it was", async () => {
    const client = wrapped();
    // buildURL reads the client's private (#) members: it must run on the client, not on the wrapper.
    assert.equal(client.buildURL("/chat/completions", {}), `${stub.baseURL}/chat/completions`);
    assert.equal(client.baseURL, stub.baseURL);
    assert.equal(typeof client.embeddings.create, "function");
    await assert.rejects(client.models.list(), OpenAI.NotFoundError);
  });

  it("maps a request to the scope of the shared scheme", () => {
    const body = {
      model: "gpt-test",
      messages: [SYSTEM, { role: "user", content: [{ type: "text", text: "Part one" }, { type: "text", text: "part two" }] }],
      temperature: 0.2,
      stream: true,
      stream_options: { include_usage: true },
      user: "u",
      metadata: { a: "b" },
      store: false,
      service_tier: "auto",
      seed: undefined,
      top_p: null,
    };
    assert.deepEqual(cacheableRequest(body, "app"), {
      prompt: "Part one\npart two",
      scope: { namespace: "app", model: "gpt-test", context: contextKey({ params: { temperature: 0.2 }, messages: [SYSTEM] }) },
    });
    assert.equal(cacheableRequest({ ...body, n: 2 }, "app"), null);
    assert.equal(cacheableRequest({ ...body, messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "x" } }] }] }, "app"), null);
    assert.equal(cacheableRequest({ ...body, messages: [{ role: "user", content: "q" }, { role: "assistant", content: "a" }] }, "app"), null);
    assert.equal(cacheableRequest({ ...body, messages: [{ role: "user", content: [{ type: "input_audio" }] }, { role: "user", content: "q" }] }, "app"), null);
  });

  it("passes uncacheable requests straight to the LLM", async () => {
    const client = wrapped();
    const before = stub.requests.length;
    const request = {
      model: "gpt-test",
      messages: [{ role: "user" as const, content: [{ type: "text" as const, text: "What is this?" }, { type: "image_url" as const, image_url: { url: "data:image/png;base64,AA==" } }] }],
    };
    for (let i = 0; i < 2; i++) {
      const reply = await client.chat.completions.create(request);
      assert.equal(cacheInfo(reply)?.outcome, "uncacheable");
    }
    await client.chat.completions.create({ model: "gpt-test", messages: ask("Two answers please"), n: 2 });
    await client.cachesvc.flush();
    assert.equal(stub.requests.length, before + 3);
    assert.equal(client.cachesvc.counters().uncacheable, 3);
    assert.equal(client.cachesvc.counters().stores, 0);
  });

  it("streams a miss through, stores it when it ended with stop, and replays hits as chunks the SDK parses", async () => {
    const client = wrapped();
    const messages = ask("Tell me about the moon landing");
    const missStream = await client.chat.completions.create({ model: "gpt-test", messages, stream: true, stream_options: { include_usage: true } });
    assert.equal(cacheInfo(missStream)?.outcome, "miss");
    const missChunks = await collect(missStream);
    const text = missChunks.map((chunk) => chunk.choices[0]?.delta.content ?? "").join("");
    assert.equal(text, "Answer to: Tell me about the moon landing");
    await client.cachesvc.flush();
    assert.equal(client.cachesvc.counters().stores, 1);
    const before = stub.requests.length;

    const hit = await client.chat.completions.create({ model: "gpt-test", messages, stream: true, stream_options: { include_usage: true } });
    assert.ok(hit instanceof Stream);
    assert.equal(cacheInfo(hit)?.outcome, "hit");
    const chunks = await collect(hit);
    assert.equal(chunks[0]?.choices[0]?.delta.role, "assistant");
    assert.ok(chunks.length > 4);
    assert.equal(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? "").join(""), text);
    assert.equal(chunks.at(-2)?.choices[0]?.finish_reason, "stop");
    assert.deepEqual(chunks.at(-1)?.choices, []);
    assert.deepEqual(chunks.at(-1)?.usage, { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 });
    assert.ok(chunks.every((chunk) => chunk.object === "chat.completion.chunk" && chunk.id === `chatcmpl-cache-${cacheInfo(hit)?.entryId}`));

    const again = await client.chat.completions.create({ model: "gpt-test", messages, stream: true });
    const assembled = await ChatCompletionStream.fromReadableStream(again.toReadableStream()).finalChatCompletion();
    assert.equal(assembled.choices[0]?.message.content, text);
    assert.equal(assembled.choices[0]?.finish_reason, "stop");

    const plain: ChatCompletion = await client.chat.completions.create({ model: "gpt-test", messages });
    assert.equal(plain.choices[0]?.message.content, text);
    assert.equal(stub.requests.length, before);
  });

  it("does not store an abandoned stream", async () => {
    const client = wrapped();
    const messages = ask("Explain quantum computing in detail");
    const stream = await client.chat.completions.create({ model: "gpt-test", messages, stream: true });
    assert.equal((await collect(stream, 2)).length, 2);
    await client.cachesvc.flush();
    assert.equal(client.cachesvc.counters().stores, 0);
    assert.equal(client.cachesvc.counters().skippedStores, 1);
    const reply = await client.chat.completions.create({ model: "gpt-test", messages });
    assert.equal(cacheInfo(reply)?.outcome, "miss");
  });

  it("stores only complete answers: not length, refusals or (by default) tool calls", async () => {
    const client = wrapped();
    for (const text of ["Write a long essay [length]", "Something bad [refusal]", "Weather in Paris? [tool]"]) {
      for (const stream of [false, true]) {
        const reply = await client.chat.completions.create({ model: "gpt-test", messages: ask(text), stream });
        if (reply instanceof Stream) {
          await collect(reply);
        }
        await client.cachesvc.flush();
      }
    }
    const counters = client.cachesvc.counters();
    assert.equal(counters.hits, 0);
    assert.equal(counters.misses, 6);
    assert.equal(counters.stores, 0);
    assert.equal(counters.skippedStores, 6);
  });

  it("caches tool calls when asked to, in entry metadata", async () => {
    const client = wrapped({ cacheToolCalls: true });
    const messages = ask("Weather in Paris today? [tool]");
    const first = await client.chat.completions.create({ model: "gpt-test", messages });
    await client.cachesvc.flush();
    const second = await client.chat.completions.create({ model: "gpt-test", messages });
    assert.equal(cacheInfo(second)?.outcome, "hit");
    assert.deepEqual(second.choices[0]?.message.tool_calls, first.choices[0]?.message.tool_calls);
    assert.equal(second.choices[0]?.finish_reason, "tool_calls");
    const stream = await client.chat.completions.create({ model: "gpt-test", messages, stream: true });
    const assembled = await ChatCompletionStream.fromReadableStream(stream.toReadableStream()).finalChatCompletion();
    assert.deepEqual(assembled.choices[0]?.message.tool_calls, first.choices[0]?.message.tool_calls);
  });

  it("carries usage on stores, with the cost from a price table", async () => {
    const stores: StoreOptions[] = [];
    const recording: SupportsCache = {
      lookup: (prompt, options) => cache.lookup(prompt, options),
      store: (prompt, completion, options) => {
        stores.push(options ?? {});
        return cache.store(prompt, completion, options);
      },
    };
    const client = wrapped({ cache: recording, prices: { "gpt-test-2025-01-01": { inputPerMillion: 2, outputPerMillion: 8 } } });
    const reply = await client.chat.completions.create({ model: "gpt-test", messages: ask("Name three primary colours") });
    await client.cachesvc.flush();
    const completionTokens = reply.usage?.completion_tokens ?? 0;
    assert.ok(completionTokens > 0);
    assert.deepEqual(stores[0]?.usage, { promptTokens: 10, completionTokens, costUsd: (10 * 2 + completionTokens * 8) / 1e6 });
    assert.equal(stores[0]?.metadata?.["openai.model"], "gpt-test-2025-01-01");
    assert.equal(stores[0]?.metadata?.["openai.finish_reason"], "stop");
    assert.equal(stores[0]?.metadata?.["openai.id"], reply.id);
    assert.equal(stores[0]?.metadata?.["openai.tool_calls"], undefined);
  });

  it("counts the stored usage as saved on every hit (server stats)", async () => {
    const client = wrapped();
    const namespace = `ns-${namespaceCount}`;
    const messages = ask("Which planet is the largest?");
    const first = await client.chat.completions.create({ model: "gpt-test", messages });
    await client.cachesvc.flush();
    const stored = (first.usage?.prompt_tokens ?? 0) + (first.usage?.completion_tokens ?? 0);
    assert.ok(stored > 0);
    const before = (await cache.stats({ namespace })).total.tokensSaved;
    for (let i = 0; i < 2; i++) {
      const reply = await client.chat.completions.create({ model: "gpt-test", messages });
      assert.equal(cacheInfo(reply)?.outcome, "hit");
    }
    assert.equal((await cache.stats({ namespace })).total.tokensSaved, before + 2 * stored);
  });

  it("stores the usage of a streamed miss that did not ask for it, without showing the usage chunk", async () => {
    const stores: StoreOptions[] = [];
    const recording: SupportsCache = {
      lookup: (prompt, options) => cache.lookup(prompt, options),
      store: (prompt, completion, options) => {
        stores.push(options ?? {});
        return cache.store(prompt, completion, options);
      },
    };
    const client = wrapped({ cache: recording });
    const stream = await client.chat.completions.create({ model: "gpt-test", messages: ask("Name a prime number"), stream: true });
    const chunks = await collect(stream);
    await client.cachesvc.flush();
    assert.ok(chunks.every((chunk) => chunk.usage === undefined && chunk.choices.length === 1));
    assert.equal(stores[0]?.usage?.promptTokens, 10);
    assert.ok((stores[0]?.usage?.completionTokens ?? 0) > 0);
  });

  it("makes one LLM call for eight concurrent identical misses (single-flight); the others wait for its store", { timeout: 120_000 }, async () => {
    const waiting: LookupOptions[] = [];
    let sawWaiters = (): void => undefined;
    const sevenWaiting = new Promise<void>((resolve) => (sawWaiters = resolve));
    const counting: SupportsCache = {
      lookup: (prompt, options) => {
        if (options?.fillWaitMs !== undefined) {
          waiting.push(options);
          if (waiting.length === 7) {
            sawWaiters();
          }
        }
        return cache.lookup(prompt, options);
      },
      store: (prompt, completion, options) => cache.store(prompt, completion, options),
      releaseFill: (prompt, token, options) => cache.releaseFill(prompt, token, options),
    };
    const client = wrapped({ cache: counting });
    const before = stub.requests.length;
    // The first caller's LLM answer is held until the seven others were told the fill is pending and wait for it.
    stub.hold();
    let replies: ChatCompletion[];
    try {
      const calls = Array.from({ length: 8 }, () =>
        client.chat.completions.create({ model: "gpt-test", messages: ask("What does single-flight mean?") }));
      await sevenWaiting;
      stub.open();
      replies = await Promise.all(calls);
    } finally {
      stub.open();
    }
    assert.equal(stub.requests.length, before + 1);
    assert.equal(new Set(replies.map((reply) => reply.choices[0]?.message.content)).size, 1);
    assert.deepEqual(replies.map((reply) => cacheInfo(reply)?.outcome).sort(), ["hit", "hit", "hit", "hit", "hit", "hit", "hit", "miss"]);
    assert.ok(waiting.every((options) => options.fillLeaseMs === 60_000 && options.fillWaitMs === 30_000));
    assert.deepEqual(client.cachesvc.counters(), {
      hits: 7, misses: 1, uncacheable: 0, bypassed: 0, errors: 0, stores: 1, skippedStores: 0,
    });
  });

  it("gives the fill lease back when the answer is not stored, so a waiter takes over at once", async () => {
    const released: string[] = [];
    const recording: SupportsCache = {
      lookup: (prompt, options) => cache.lookup(prompt, options),
      store: (prompt, completion, options) => cache.store(prompt, completion, options),
      releaseFill: async (prompt, token, options) => {
        const result = await cache.releaseFill(prompt, token, options);
        released.push(`${prompt}:${result}`);
        return result;
      },
    };
    const client = wrapped({ cache: recording });
    const messages = ask("Write a long essay on fill leases [length]");
    await client.chat.completions.create({ model: "gpt-test", messages });
    await client.cachesvc.flush();
    assert.deepEqual(released, ["Write a long essay on fill leases [length]:true"]);
    // The lease is gone: the next identical miss takes it (it is not told another caller is filling).
    const scope = cacheableRequest({ model: "gpt-test", messages }, `ns-${namespaceCount}`)?.scope;
    const found = await cache.lookup("Write a long essay on fill leases [length]", { ...(scope ? { scope } : {}), fillLeaseMs: 1000 });
    assert.equal(found.fillPending, false);
    assert.ok(found.fillToken !== null);
    assert.equal(await cache.releaseFill("Write a long essay on fill leases [length]", found.fillToken, scope ? { scope } : {}), true);
  });

  it("still answers when the cache is down, and stops asking it once the breaker opens", async () => {
    const down = new CacheClient(await closedPort());
    const errors: unknown[] = [];
    const client = wrapped({ cache: down, breaker: { failureThreshold: 2, cooldownMs: 60_000 }, onError: (error) => errors.push(error) });
    try {
      for (let i = 0; i < 4; i++) {
        const reply = await client.chat.completions.create({ model: "gpt-test", messages: ask(`Question ${i}`) });
        assert.equal(reply.choices[0]?.message.content, `Answer to: Question ${i}`);
        assert.equal(cacheInfo(reply)?.outcome, "bypassed");
      }
      assert.equal(client.cachesvc.breakerState, "open");
      assert.equal(client.cachesvc.counters().errors, 2);
      assert.equal(client.cachesvc.counters().bypassed, 4);
      assert.ok(errors.every((error) => error instanceof Unavailable));
    } finally {
      down.close();
    }
  });

  it("falls back to the LLM when a lookup passes its deadline", async () => {
    const silent = await startSilentServer();
    const slow = new CacheClient(silent.target);
    const client = wrapped({ cache: slow, lookupTimeoutMs: 50 });
    try {
      const reply = await client.chat.completions.create({ model: "gpt-test", messages: ask("Is the cache slow?") });
      assert.equal(reply.choices[0]?.message.content, "Answer to: Is the cache slow?");
      assert.equal(cacheInfo(reply)?.outcome, "bypassed");
      assert.equal(client.cachesvc.counters().errors, 1);
    } finally {
      slow.close();
      await silent.close();
    }
  });

  it("throws cache errors with onCacheError: raise", async () => {
    const down = new CacheClient(await closedPort());
    const client = wrapped({ cache: down, onCacheError: "raise" });
    try {
      await assert.rejects(client.chat.completions.create({ model: "gpt-test", messages: ask("Hello?") }), Unavailable);
    } finally {
      down.close();
    }
  });
});
