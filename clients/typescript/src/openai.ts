/**
 * `cachedOpenAI`: the cache in front of the `openai` SDK's `chat.completions.create`.
 *
 *     import OpenAI from "openai";
 *     import { CacheClient } from "cachesvc-client";
 *     import { cachedOpenAI, cacheInfo } from "cachesvc-client/openai";
 *
 *     const openai = cachedOpenAI(new OpenAI(), { cache: new CacheClient(), namespace: "support-bot" });
 *     const reply = await openai.chat.completions.create({ model: "gpt-4o-mini", messages });
 *     cacheInfo(reply);   // { outcome: "hit", entryId: "...", similarity: 0.97, exact: false } on a hit
 *
 * Same semantics as the Python wrapper (`cachesvc_client.openai`): the same scope for the same request (see
 * openai-scope.ts), stores only complete answers, hits replayed as the SDK's own types (a `Stream` of chunks for
 * `stream: true`), single-flight (concurrent identical misses make one LLM call, the others wait for its store),
 * and the cache never fails the application by default: a slow (past `lookupTimeoutMs`) or failing cache means
 * the request goes to the LLM, and after repeated failures a circuit breaker skips the cache for a while.
 */

import type OpenAI from "openai";
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionCreateParams,
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionCreateParamsStreaming,
  ChatCompletionMessageToolCall,
} from "openai/resources/chat/completions";
import { Stream } from "openai/streaming";

import { CircuitBreaker, type BreakerOptions, type BreakerState } from "./breaker.js";
import type { LookupOptions, ReleaseFillOptions, StoreOptions } from "./client.js";
import { CacheClientError } from "./errors.js";
import { cacheableRequest, type CacheableRequest } from "./openai-scope.js";
import type { Entry, LookupResult, StoreResult, Usage } from "./types.js";
import { checkFillMs, checkMinSimilarity, checkTimeoutMs, checkTtlSeconds } from "./validate.js";

export { CircuitBreaker, type BreakerOptions, type BreakerState } from "./breaker.js";
export { cacheableRequest, NON_SCOPE_PARAMS, type CacheableRequest } from "./openai-scope.js";

/** The part of `CacheClient` the wrapper uses (without `releaseFill`, a failed fill's lease runs out instead). */
export interface SupportsCache {
  lookup(prompt: string, options?: LookupOptions): Promise<LookupResult>;
  store(prompt: string, completion: string, options?: StoreOptions): Promise<StoreResult>;
  releaseFill?(prompt: string, fillToken: string, options?: ReleaseFillOptions): Promise<boolean>;
}

/** Default of `fillLeaseMs`: how long a miss may hold the fill lease (the Python wrapper's `fill_lease`). */
export const DEFAULT_FILL_LEASE_MS = 60_000;
/** Default of `fillWaitMs`: how long a call waits for another caller's identical miss (Python: `fill_wait`). */
export const DEFAULT_FILL_WAIT_MS = 30_000;

/** Prices of one model, in US dollars per million tokens. */
export interface ModelPrice {
  readonly inputPerMillion: number;
  readonly outputPerMillion: number;
}

/** Options of `cachedOpenAI`. */
export interface CachedOpenAIOptions {
  /** The cache client (a `CacheClient`). */
  readonly cache: SupportsCache;
  /** The cache namespace of this application's entries ("" is the server's default). */
  readonly namespace?: string;
  /** Threshold override in [0, 1]; absent uses the server's. */
  readonly minSimilarity?: number;
  /** Seconds until stored answers expire, 0 for never; absent uses the server's default TTL. */
  readonly ttlSeconds?: number;
  /** Deadline of a lookup in ms (default 50): past it the request goes to the LLM as if the cache missed. */
  readonly lookupTimeoutMs?: number;
  /** Deadline of a store in ms (default 1000). */
  readonly storeTimeoutMs?: number;
  /** Concurrent identical misses (in any process) make one LLM call, the others wait for its answer (default true). */
  readonly singleFlight?: boolean;
  /** How long a miss may hold the fill lease before others stop waiting for it, in ms (default 60000). */
  readonly fillLeaseMs?: number;
  /** How long a call waits for another caller's identical miss at most, in ms (default 30000; 0: never waits). */
  readonly fillWaitMs?: number;
  /** Also cache answers that are tool calls (kept in entry metadata as `openai.tool_calls`); default false. */
  readonly cacheToolCalls?: boolean;
  /** Prices per model (the response's model, else the request's), to store `costUsd` with each answer. */
  readonly prices?: Readonly<Record<string, ModelPrice>>;
  /** The circuit breaker around cache calls. */
  readonly breaker?: BreakerOptions;
  /** "bypass" (default): a failed cache call sends the request to the LLM; "raise": the error is thrown. */
  readonly onCacheError?: "bypass" | "raise";
  /** Called with every cache error that was bypassed (for logging). */
  readonly onError?: (error: unknown, step: CacheStep) => void;
}

/** The cache call that failed. */
export type CacheStep = "lookup" | "store" | "release";

/** Where a reply came from; read it with `cacheInfo(reply)`. */
export interface CacheInfo {
  /**
   * "hit": served from the cache (the LLM was not called); "miss": the LLM answered after a lookup;
   * "uncacheable": the request is not cacheable (e.g. `n: 2`, images); "bypassed": the cache failed or its
   * circuit breaker is open, the LLM answered.
   */
  readonly outcome: "hit" | "miss" | "uncacheable" | "bypassed";
  /** On a hit, the served entry's id; null otherwise. */
  readonly entryId: string | null;
  /** On a hit, the served entry's similarity; on a miss, the best similarity seen; null otherwise. */
  readonly similarity: number | null;
  /** The hit came from the exact path (same normalised prompt). */
  readonly exact: boolean;
  /** The lookup waited for another caller's identical miss to be answered (single-flight). */
  readonly waitedForFill: boolean;
}

/** What the wrapper counted since it was made. */
export interface CacheCounters {
  hits: number;
  misses: number;
  uncacheable: number;
  bypassed: number;
  errors: number;
  stores: number;
  /** Answers not stored by the guardrails (incomplete, refusal, tool calls, abandoned or failed streams). */
  skippedStores: number;
}

type RequestOptions = Parameters<OpenAI["chat"]["completions"]["create"]>[1];

/** `chat.completions.create` with the cache in front; replies are plain promises (no `withResponse()`). */
export interface CachedCreate {
  (body: ChatCompletionCreateParamsNonStreaming, options?: RequestOptions): Promise<ChatCompletion>;
  (body: ChatCompletionCreateParamsStreaming, options?: RequestOptions): Promise<Stream<ChatCompletionChunk>>;
  (body: ChatCompletionCreateParams, options?: RequestOptions): Promise<ChatCompletion | Stream<ChatCompletionChunk>>;
}

/** The wrapper's own controls, as `client.cachesvc`. */
export interface CachedOpenAIControls {
  /** Counters since the wrapper was made (a copy). */
  counters(): CacheCounters;
  /** The circuit breaker's state. */
  readonly breakerState: BreakerState;
  /** Resolves when every store started so far has finished (stores run after the reply is returned). */
  flush(): Promise<void>;
}

/** The wrapped client: the same OpenAI client, but `chat.completions.create` goes through the cache. */
export type CachedOpenAI<T extends OpenAI> = Omit<T, "chat"> & {
  readonly chat: Omit<T["chat"], "completions"> & {
    readonly completions: Omit<T["chat"]["completions"], "create"> & { readonly create: CachedCreate };
  };
  readonly cachesvc: CachedOpenAIControls;
};

const INFO = new WeakMap<object, CacheInfo>();

/**
 * Where a reply of a wrapped client came from: its outcome, and on a hit the entry id and similarity.
 *
 * @param reply - A `ChatCompletion` or `Stream` returned by the wrapped `create`.
 * @returns The cache info, or undefined for objects the wrapper did not return.
 */
export function cacheInfo(reply: object): CacheInfo | undefined {
  return INFO.get(reply);
}

function tagged<T extends object>(reply: T, info: CacheInfo): T {
  INFO.set(reply, info);
  return reply;
}

const PASS_THROUGH = { entryId: null, similarity: null, exact: false, waitedForFill: false } as const;

/** A miss being answered: where to store, and the fill lease token when this call took the lease. */
interface Fill {
  readonly request: CacheableRequest;
  readonly token: string | null;
}

interface Answer {
  readonly id: string;
  readonly model: string;
  readonly finishReason: string | null;
  readonly content: string;
  readonly refusal: string | null;
  readonly toolCalls: readonly ChatCompletionMessageToolCall[];
  readonly usage: { prompt_tokens: number; completion_tokens: number } | null;
}

/**
 * Puts the cache in front of `openai.chat.completions.create`; every other method is the client's own.
 *
 * @param openai - An `OpenAI` client (the `openai` npm package, v5 or later).
 * @param options - The cache, namespace and policies.
 * @returns The same client, with `chat.completions.create` going through the cache and `cachesvc` controls.
 * @throws RangeError - A bad minSimilarity, ttlSeconds or timeout.
 */
export function cachedOpenAI<T extends OpenAI>(openai: T, options: CachedOpenAIOptions): CachedOpenAI<T> {
  const wrapper = new Wrapper(openai, options);
  const completions = overlay(openai.chat.completions, { create: wrapper.create });
  const chat = overlay(openai.chat, { completions });
  return overlay(openai, { chat, cachesvc: wrapper.controls }) as unknown as CachedOpenAI<T>;
}

/**
 * `target` with some properties replaced. Everything else is read from the target itself, with methods bound to
 * it, since the SDK's classes use private (#) members that a proxy as `this` could not reach.
 */
function overlay<T extends object>(target: T, replaced: Readonly<Record<string, unknown>>): T {
  return new Proxy(target, {
    get: (object, property) => {
      if (typeof property === "string" && Object.hasOwn(replaced, property)) {
        return replaced[property];
      }
      const value: unknown = Reflect.get(object, property, object);
      return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(object) : value;
    },
  });
}

class Wrapper {
  private readonly counters: CacheCounters = {
    hits: 0, misses: 0, uncacheable: 0, bypassed: 0, errors: 0, stores: 0, skippedStores: 0,
  };
  private readonly pending = new Set<Promise<void>>();
  private readonly breaker: CircuitBreaker;
  private readonly namespace: string;
  private readonly lookupTimeoutMs: number;
  private readonly storeTimeoutMs: number;
  private readonly singleFlight: boolean;
  private readonly fillLeaseMs: number;
  private readonly fillWaitMs: number;
  readonly controls: CachedOpenAIControls;

  constructor(private readonly openai: OpenAI, private readonly options: CachedOpenAIOptions) {
    if (options.minSimilarity !== undefined) {
      checkMinSimilarity(options.minSimilarity);
    }
    if (options.ttlSeconds !== undefined) {
      checkTtlSeconds(options.ttlSeconds);
    }
    this.lookupTimeoutMs = checkTimeoutMs(options.lookupTimeoutMs ?? 50) ?? 50;
    this.storeTimeoutMs = checkTimeoutMs(options.storeTimeoutMs ?? 1000) ?? 1000;
    this.singleFlight = options.singleFlight ?? true;
    this.fillLeaseMs = checkFillMs("fillLeaseMs", options.fillLeaseMs ?? DEFAULT_FILL_LEASE_MS);
    const fillWaitMs = options.fillWaitMs ?? DEFAULT_FILL_WAIT_MS;
    this.fillWaitMs = fillWaitMs === 0 ? 0 : checkFillMs("fillWaitMs", fillWaitMs);
    this.namespace = options.namespace ?? "";
    this.breaker = new CircuitBreaker(options.breaker);
    const self = this;
    this.controls = {
      counters: () => ({ ...self.counters }),
      get breakerState() {
        return self.breaker.state;
      },
      flush: async () => {
        while (self.pending.size > 0) {
          await Promise.all([...self.pending]);
        }
      },
    };
  }

  readonly create = (async (body: ChatCompletionCreateParams, requestOptions?: RequestOptions) => {
    const request = cacheableRequest(body as unknown as Record<string, unknown>, this.namespace);
    if (request === null) {
      this.counters.uncacheable += 1;
      return tagged(await this.callLlm(body, requestOptions), { outcome: "uncacheable", ...PASS_THROUGH });
    }
    const found = await this.lookup(request);
    if (found === null) {
      this.counters.bypassed += 1;
      return tagged(await this.callLlm(body, requestOptions), { outcome: "bypassed", ...PASS_THROUGH });
    }
    const waitedForFill = found.waitedForFill;
    if (found.hit && found.entry !== null) {
      this.counters.hits += 1;
      const info: CacheInfo = { outcome: "hit", entryId: found.entry.id, similarity: found.similarity, exact: found.exact, waitedForFill };
      return tagged(body.stream === true ? replayStream(found.entry, body) : replayCompletion(found.entry, body), info);
    }
    this.counters.misses += 1;
    const info: CacheInfo = { outcome: "miss", entryId: null, similarity: found.similarity, exact: false, waitedForFill };
    const fill: Fill = { request, token: found.fillToken };
    // A streamed answer's usage comes in a last chunk the caller may not have asked for: ask for it (to store the
    // usage), and hide it from the caller.
    const hideUsage = body.stream === true && body.stream_options?.include_usage !== true;
    const llmBody = hideUsage ? { ...body, stream_options: { ...body.stream_options, include_usage: true } } : body;
    let reply: ChatCompletion | Stream<ChatCompletionChunk>;
    try {
      reply = await this.callLlm(llmBody, requestOptions);
    } catch (error) {
      this.release(fill);
      throw error;
    }
    if (body.stream === true) {
      return tagged(this.recordingStream(reply as Stream<ChatCompletionChunk>, fill, hideUsage), info);
    }
    this.maybeStore(fill, answerOf(reply as ChatCompletion));
    return tagged(reply, info);
  }) as CachedCreate;

  private async callLlm(body: ChatCompletionCreateParams, requestOptions: RequestOptions): Promise<ChatCompletion | Stream<ChatCompletionChunk>> {
    return await this.openai.chat.completions.create(body, requestOptions);
  }

  /** The lookup, or null when the cache was skipped or failed (and the policy says bypass). */
  private async lookup(request: CacheableRequest): Promise<LookupResult | null> {
    if (!this.breaker.allow()) {
      return null;
    }
    const options: LookupOptions = {
      scope: request.scope,
      timeoutMs: this.lookupTimeoutMs,
      ...(this.options.minSimilarity === undefined ? {} : { minSimilarity: this.options.minSimilarity }),
      ...(this.singleFlight ? { fillLeaseMs: this.fillLeaseMs } : {}),
    };
    try {
      let found = await this.options.cache.lookup(request.prompt, options);
      if (this.singleFlight && found.fillPending && this.fillWaitMs > 0) {
        // Another caller is answering this prompt: wait for its store (or take the lease when it gives up).
        found = await this.options.cache.lookup(request.prompt, {
          ...options,
          fillWaitMs: this.fillWaitMs,
          timeoutMs: this.fillWaitMs + this.lookupTimeoutMs,
        });
      }
      this.breaker.success();
      return found;
    } catch (error) {
      this.failed(error, "lookup");
      return null;
    }
  }

  private failed(error: unknown, step: CacheStep): void {
    this.counters.errors += 1;
    this.breaker.failure();
    if (this.options.onCacheError === "raise" || !(error instanceof CacheClientError)) {
      throw error;
    }
    this.options.onError?.(error, step);
  }

  private recordingStream(reply: Stream<ChatCompletionChunk>, fill: Fill, hideUsage: boolean): Stream<ChatCompletionChunk> {
    const self = this;
    async function* recorded(): AsyncGenerator<ChatCompletionChunk> {
      const answer = new StreamedAnswer();
      let completed = false;
      try {
        for await (const chunk of reply) {
          answer.add(chunk);
          if (!(hideUsage && chunk.choices.length === 0 && chunk.usage)) {
            yield chunk;
          }
        }
        completed = true;
      } finally {
        // An abandoned (the consumer stopped reading) or failed stream is never stored.
        if (completed) {
          self.maybeStore(fill, answer.answer());
        } else {
          self.counters.skippedStores += 1;
          self.release(fill);
        }
      }
    }
    return new Stream(() => recorded(), reply.controller);
  }

  /** Gives the fill lease back (when this call took it) so that callers waiting for it stop waiting. */
  private release(fill: Fill): void {
    const cache = this.options.cache;
    if (fill.token === null || cache.releaseFill === undefined) {
      return;
    }
    const released = cache
      .releaseFill(fill.request.prompt, fill.token, { scope: fill.request.scope, timeoutMs: this.storeTimeoutMs })
      .then(
        () => undefined,
        (error: unknown) => {
          this.counters.errors += 1;
          this.breaker.failure();
          // Nobody awaits a release, and the lease runs out by itself: report it, never throw.
          this.options.onError?.(error, "release");
        },
      );
    this.track(released);
  }

  private track(work: Promise<void>): void {
    const tracked: Promise<void> = work.finally(() => this.pending.delete(tracked));
    this.pending.add(tracked);
  }

  private maybeStore(fill: Fill, answer: Answer): void {
    const request = fill.request;
    const toolCalls = answer.toolCalls.length > 0;
    const complete = toolCalls
      ? this.options.cacheToolCalls === true && (answer.finishReason === "tool_calls" || answer.finishReason === "stop")
      : answer.finishReason === "stop" && answer.content !== "";
    if (!complete || (answer.refusal !== null && answer.refusal !== "")) {
      this.counters.skippedStores += 1;
      this.release(fill);
      return;
    }
    if (!this.breaker.allow()) {
      this.counters.skippedStores += 1;
      return;
    }
    const metadata: Record<string, string> = {
      "openai.model": answer.model,
      "openai.finish_reason": answer.finishReason ?? "",
      "openai.id": answer.id,
    };
    if (toolCalls) {
      metadata["openai.tool_calls"] = JSON.stringify(answer.toolCalls);
    }
    const usage = this.usageOf(answer, request);
    const stored = this.options.cache
      .store(request.prompt, answer.content, {
        scope: request.scope,
        metadata,
        timeoutMs: this.storeTimeoutMs,
        ...(usage === undefined ? {} : { usage }),
        ...(this.options.ttlSeconds === undefined ? {} : { ttlSeconds: this.options.ttlSeconds }),
      })
      .then(
        () => {
          this.counters.stores += 1;
          this.breaker.success();
        },
        (error: unknown) => {
          try {
            this.failed(error, "store");
          } catch (raised) {
            // A store runs after the reply was returned: nobody awaits it, so "raise" can only report it.
            this.options.onError?.(raised, "store");
          }
          this.release(fill);
        },
      );
    this.track(stored);
  }

  private usageOf(answer: Answer, request: CacheableRequest): Usage | undefined {
    if (answer.usage === null) {
      return undefined;
    }
    const { prompt_tokens: promptTokens, completion_tokens: completionTokens } = answer.usage;
    const price = this.options.prices?.[answer.model] ?? this.options.prices?.[request.scope.model ?? ""];
    if (price === undefined) {
      return { promptTokens, completionTokens };
    }
    const costUsd = (promptTokens * price.inputPerMillion + completionTokens * price.outputPerMillion) / 1e6;
    return { promptTokens, completionTokens, costUsd };
  }
}

function answerOf(reply: ChatCompletion): Answer {
  const choice = reply.choices.length === 1 ? reply.choices[0] : undefined;
  return {
    id: reply.id,
    model: reply.model,
    finishReason: choice?.finish_reason ?? null,
    content: choice?.message.content ?? "",
    refusal: choice?.message.refusal ?? null,
    toolCalls: choice?.message.tool_calls ?? [],
    usage: reply.usage ?? null,
  };
}

/** Assembles a streamed answer from its chunks (one choice: cacheable requests have n = 1). */
class StreamedAnswer {
  private id = "";
  private model = "";
  private finishReason: string | null = null;
  private content = "";
  private refusal = "";
  private usage: Answer["usage"] = null;
  private readonly toolCalls: { id: string; type: "function"; function: { name: string; arguments: string } }[] = [];

  add(chunk: ChatCompletionChunk): void {
    this.id ||= chunk.id;
    this.model ||= chunk.model;
    if (chunk.usage) {
      this.usage = chunk.usage;
    }
    for (const choice of chunk.choices) {
      if (choice.index !== 0) {
        continue;
      }
      this.content += choice.delta.content ?? "";
      this.refusal += choice.delta.refusal ?? "";
      for (const call of choice.delta.tool_calls ?? []) {
        const slot = (this.toolCalls[call.index] ??= { id: "", type: "function", function: { name: "", arguments: "" } });
        slot.id ||= call.id ?? "";
        slot.function.name += call.function?.name ?? "";
        slot.function.arguments += call.function?.arguments ?? "";
      }
      if (choice.finish_reason) {
        this.finishReason = choice.finish_reason;
      }
    }
  }

  answer(): Answer {
    return {
      id: this.id,
      model: this.model,
      finishReason: this.finishReason,
      content: this.content,
      refusal: this.refusal === "" ? null : this.refusal,
      toolCalls: this.toolCalls.filter((call) => call !== undefined),
      usage: this.usage,
    };
  }
}

function storedToolCalls(entry: Entry): ChatCompletionMessageToolCall[] {
  const text = entry.metadata["openai.tool_calls"];
  return text === undefined ? [] : (JSON.parse(text) as ChatCompletionMessageToolCall[]);
}

const ZERO_USAGE = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 } as const;

function replayCompletion(entry: Entry, body: ChatCompletionCreateParams): ChatCompletion {
  const toolCalls = storedToolCalls(entry);
  return {
    id: `chatcmpl-cache-${entry.id}`,
    object: "chat.completion",
    created: Math.floor(entry.createdAt.getTime() / 1000),
    model: entry.metadata["openai.model"] ?? body.model,
    choices: [
      {
        index: 0,
        message: {
          role: "assistant",
          content: entry.completion,
          refusal: null,
          ...(toolCalls.length > 0 ? { tool_calls: toolCalls } : {}),
        },
        finish_reason: toolCalls.length > 0 ? "tool_calls" : "stop",
        logprobs: null,
      },
    ],
    usage: { ...ZERO_USAGE },
  };
}

/** Content pieces of a replayed completion: words with their trailing whitespace (joined, the exact text). */
function pieces(text: string): string[] {
  return text.match(/\S+\s*|\s+/gu) ?? [];
}

function replayStream(entry: Entry, body: ChatCompletionCreateParams): Stream<ChatCompletionChunk> {
  const toolCalls = storedToolCalls(entry);
  const base = {
    id: `chatcmpl-cache-${entry.id}`,
    object: "chat.completion.chunk" as const,
    created: Math.floor(entry.createdAt.getTime() / 1000),
    model: entry.metadata["openai.model"] ?? body.model,
  };
  const chunk = (delta: ChatCompletionChunk.Choice.Delta, finish: ChatCompletionChunk.Choice["finish_reason"]): ChatCompletionChunk => ({
    ...base,
    choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
  });
  const includeUsage = body.stream_options?.include_usage === true;
  async function* replay(): AsyncGenerator<ChatCompletionChunk> {
    yield chunk({ role: "assistant", content: "" }, null);
    for (const piece of pieces(entry.completion)) {
      yield chunk({ content: piece }, null);
    }
    if (toolCalls.length > 0) {
      yield chunk({
        tool_calls: toolCalls.map((call, index) => ({
          index,
          id: call.id,
          type: "function" as const,
          function: "function" in call ? call.function : { name: "", arguments: "" },
        })),
      }, null);
    }
    yield chunk({}, toolCalls.length > 0 ? "tool_calls" : "stop");
    if (includeUsage) {
      yield { ...base, choices: [], usage: { ...ZERO_USAGE } };
    }
  }
  return new Stream(() => replay(), new AbortController());
}
