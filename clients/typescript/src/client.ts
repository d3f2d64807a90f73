/**
 * `CacheClient`: the cachesvc API from Node.js over gRPC (HTTP/2), via `@connectrpc/connect-node`.
 *
 *     const cache = new CacheClient("127.0.0.1:50051", { apiKey: "..." });
 *     const found = await cache.lookup("What is the capital of France?", { scope: { model: "gpt-x" } });
 *     if (!found.hit) await cache.store("What is the capital of France?", "Paris.", { scope: { model: "gpt-x" } });
 *     cache.close();
 *
 * Failed calls throw `CacheClientError` subclasses (see errors.ts); arguments that are wrong before anything is
 * sent throw `RangeError` or `TypeError`.
 */

import { create } from "@bufbuild/protobuf";
import { createClient, type CallOptions, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import {
  lookupResultFromProto,
  scopeToProto,
  statsResultFromProto,
  storeResultFromProto,
  usageToProto,
} from "./convert.js";
import { fromRpcError } from "./errors.js";
import * as pb from "./gen/cachesvc/v1/cache_pb.js";
import type { LookupResult, Scope, StatsResult, StoreResult, Usage } from "./types.js";
import { checkCostUsd, checkFillMs, checkMinSimilarity, checkTimeoutMs, checkTokens, checkTtlSeconds } from "./validate.js";

export const DEFAULT_TARGET = "127.0.0.1:50051";
export const DEFAULT_TIMEOUT_MS = 5000;

/** Options of a `CacheClient`. */
export interface CacheClientOptions {
  /** Sent as `authorization: Bearer <key>` on every call; absent sends no credentials. */
  readonly apiKey?: string;
  /** Default deadline per call in milliseconds (default 5000); null means no deadline. */
  readonly timeoutMs?: number | null;
}

/** Options every call takes. */
export interface CallTimeout {
  /** Deadline for this call in milliseconds; null for none; absent for the client's default. */
  readonly timeoutMs?: number | null;
  /** Aborts the call (it then fails with a `CacheClientError` whose status is CANCELLED). */
  readonly signal?: AbortSignal;
}

export interface LookupOptions extends CallTimeout {
  /** Where to look; absent is the default scope. */
  readonly scope?: Scope;
  /** Threshold override in [0, 1] for this call; absent uses the server's. */
  readonly minSimilarity?: number;
  /** Also return the nearest candidates and why each was or was not served. */
  readonly explain?: boolean;
  /**
   * Single-flight: on a miss, take the fill lease on this prompt for this many ms (`LookupResult.fillToken`),
   * unless another caller holds it (`LookupResult.fillPending`). Absent: no lease.
   */
  readonly fillLeaseMs?: number;
  /**
   * With `fillLeaseMs`: when another caller holds the lease, wait up to this many ms (capped by the server and
   * the call's deadline) for its store and answer from it (`LookupResult.waitedForFill`).
   */
  readonly fillWaitMs?: number;
}

export interface StoreOptions extends CallTimeout {
  /** Where to store; absent is the default scope. */
  readonly scope?: Scope;
  /** Free-form string metadata kept with the entry. */
  readonly metadata?: Readonly<Record<string, string>>;
  /** Seconds until the entry expires, 0 for never; absent uses the server's default TTL. */
  readonly ttlSeconds?: number;
  /** What producing the completion cost; the server counts it as saved on every hit. */
  readonly usage?: Usage;
}

export interface ReleaseFillOptions extends CallTimeout {
  /** The scope of the lookup that took the lease. */
  readonly scope?: Scope;
}

export interface DeleteScopeOptions extends CallTimeout {
  /** Only entries of this model; absent for every model. */
  readonly model?: string;
  /** Only entries of this context key; absent for every context. */
  readonly context?: string;
}

export interface StatsOptions extends CallTimeout {
  /** Only this namespace; absent for every namespace. */
  readonly namespace?: string;
}

export interface FeedbackOptions extends CallTimeout {
  /** The scope of the lookup that served the entry. */
  readonly scope?: Scope;
}

/** Lifecycle of a client: usable until closed, never reopened. */
export type ClientState = "open" | "closed";

/**
 * Client for a cachesvc server. One client holds one HTTP/2 connection (opened on first use, shared by
 * concurrent calls); close it when done so the process can exit.
 */
export class CacheClient {
  private readonly client: Client<typeof pb.SemanticCache>;
  private readonly sessions: Http2SessionManager;
  private readonly headers: Readonly<Record<string, string>>;
  private readonly timeoutMs: number | null;
  private stateValue: ClientState = "open";

  /**
   * Creates the client; connecting happens on the first call.
   *
   * @param target - `host:port` of a plaintext server, or a `http://` / `https://` URL.
   * @throws RangeError - An empty apiKey or a non-positive timeoutMs.
   */
  constructor(target: string = DEFAULT_TARGET, options: CacheClientOptions = {}) {
    if (options.apiKey !== undefined && options.apiKey === "") {
      throw new RangeError("apiKey must be a non-empty string or absent");
    }
    this.timeoutMs = checkTimeoutMs(options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : options.timeoutMs);
    this.headers = options.apiKey === undefined ? {} : { authorization: `Bearer ${options.apiKey}` };
    const baseUrl = target.includes("://") ? target : `http://${target}`;
    this.sessions = new Http2SessionManager(baseUrl);
    this.client = createClient(pb.SemanticCache, createGrpcTransport({ baseUrl, sessionManager: this.sessions }));
  }

  /** Whether the client can still be used. */
  get state(): ClientState {
    return this.stateValue;
  }

  private async call<T>(run: (options: CallOptions) => Promise<T>, timeout: CallTimeout): Promise<T> {
    if (this.stateValue === "closed") {
      throw new Error("CacheClient is closed");
    }
    const timeoutMs = timeout.timeoutMs === undefined ? this.timeoutMs : checkTimeoutMs(timeout.timeoutMs);
    const options: CallOptions = {
      headers: this.headers,
      ...(timeoutMs === null ? {} : { timeoutMs }),
      ...(timeout.signal === undefined ? {} : { signal: timeout.signal }),
    };
    try {
      return await run(options);
    } catch (error) {
      throw fromRpcError(error);
    }
  }

  /**
   * Looks for a cached completion of `prompt`, or of a prompt that means the same, in the scope.
   *
   * @returns The hit (with its entry) or the miss (with the best similarity seen).
   * @throws RangeError - minSimilarity outside [0, 1], a bad fill time, fillWaitMs without fillLeaseMs or a bad
   *   timeoutMs; nothing is sent.
   * @throws CacheClientError - The call failed.
   */
  async lookup(prompt: string, options: LookupOptions = {}): Promise<LookupResult> {
    if (options.fillWaitMs !== undefined && options.fillLeaseMs === undefined) {
      throw new RangeError("fillWaitMs needs fillLeaseMs: only single-flight lookups wait for a fill");
    }
    const request = create(pb.LookupRequestSchema, {
      scope: scopeToProto(options.scope),
      prompt,
      explain: options.explain ?? false,
      ...(options.minSimilarity === undefined ? {} : { minSimilarity: checkMinSimilarity(options.minSimilarity) }),
      ...(options.fillLeaseMs === undefined ? {} : { fillLeaseMs: checkFillMs("fillLeaseMs", options.fillLeaseMs) }),
      ...(options.fillWaitMs === undefined ? {} : { fillWaitMs: checkFillMs("fillWaitMs", options.fillWaitMs) }),
    });
    return lookupResultFromProto(await this.call((call) => this.client.lookup(request, call), options));
  }

  /**
   * Caches `completion` for `prompt`, replacing an entry with the same scope and normalised prompt.
   *
   * @returns The entry id, whether an entry was replaced, and the expiry.
   * @throws RangeError | TypeError - A bad ttlSeconds, usage or timeoutMs; nothing is sent.
   * @throws CacheClientError - The call failed.
   */
  async store(prompt: string, completion: string, options: StoreOptions = {}): Promise<StoreResult> {
    const usage = options.usage;
    if (usage !== undefined) {
      checkTokens("usage.promptTokens", usage.promptTokens);
      checkTokens("usage.completionTokens", usage.completionTokens);
      if (usage.costUsd !== undefined) {
        checkCostUsd(usage.costUsd);
      }
    }
    const request = create(pb.StoreRequestSchema, {
      scope: scopeToProto(options.scope),
      prompt,
      completion,
      metadata: { ...options.metadata },
      ...(options.ttlSeconds === undefined ? {} : { ttlSeconds: BigInt(checkTtlSeconds(options.ttlSeconds)) }),
      ...(usage === undefined ? {} : { usage: usageToProto(usage) }),
    });
    return storeResultFromProto(await this.call((call) => this.client.store(request, call), options));
  }

  /**
   * Ends a fill lease taken by a single-flight lookup without storing (e.g. the LLM call failed), so callers
   * waiting for it stop waiting at once. A store of the prompt in the scope ends the lease too.
   *
   * @param prompt - The prompt of the lookup that took the lease.
   * @param fillToken - `LookupResult.fillToken`.
   * @returns False when the lease had already ended or passed to another caller.
   * @throws RangeError - An empty fillToken.
   * @throws CacheClientError - The call failed.
   */
  async releaseFill(prompt: string, fillToken: string, options: ReleaseFillOptions = {}): Promise<boolean> {
    if (fillToken === "") {
      throw new RangeError("fillToken must be non-empty");
    }
    const request = create(pb.ReleaseFillRequestSchema, { scope: scopeToProto(options.scope), prompt, fillToken });
    return (await this.call((call) => this.client.releaseFill(request, call), options)).released;
  }

  /**
   * Deletes one entry by id.
   *
   * @returns The number of entries deleted.
   * @throws RangeError - An empty entryId.
   * @throws CacheClientError - The call failed (`NotFoundError` for an unknown id).
   */
  async delete(entryId: string, options: CallTimeout = {}): Promise<number> {
    if (entryId === "") {
      throw new RangeError("entryId must be non-empty");
    }
    const request = create(pb.DeleteRequestSchema, { target: { case: "id", value: entryId } });
    return Number((await this.call((call) => this.client.delete(request, call), options)).deleted);
  }

  /**
   * Deletes every entry of a namespace ("" is the default one), optionally only those of one model and/or context.
   *
   * @returns The number of entries deleted.
   * @throws CacheClientError - The call failed.
   */
  async deleteScope(namespace: string, options: DeleteScopeOptions = {}): Promise<number> {
    const selector = create(pb.ScopeSelectorSchema, {
      namespace,
      ...(options.model === undefined ? {} : { model: options.model }),
      ...(options.context === undefined ? {} : { context: options.context }),
    });
    const request = create(pb.DeleteRequestSchema, { target: { case: "scope", value: selector } });
    return Number((await this.call((call) => this.client.delete(request, call), options)).deleted);
  }

  /**
   * Reads the counters of the caller's tenant.
   *
   * @returns Counters per namespace and in total.
   * @throws CacheClientError - The call failed.
   */
  async stats(options: StatsOptions = {}): Promise<StatsResult> {
    const request = create(pb.StatsRequestSchema, options.namespace === undefined ? {} : { namespace: options.namespace });
    return statsResultFromProto(await this.call((call) => this.client.stats(request, call), options));
  }

  /**
   * Tells the server whether a served hit was a right answer for the prompt it was served to.
   *
   * An entry the caller cannot see is NOT_FOUND (`NotFoundError`); a server too old to support feedback answers
   * UNIMPLEMENTED (`Unimplemented`).
   *
   * @throws RangeError - An empty entryId.
   * @throws CacheClientError - The call failed.
   */
  async feedback(prompt: string, entryId: string, correct: boolean, options: FeedbackOptions = {}): Promise<void> {
    if (entryId === "") {
      throw new RangeError("entryId must be non-empty");
    }
    const request = create(pb.FeedbackRequestSchema, {
      scope: scopeToProto(options.scope),
      prompt,
      entryId,
      correct,
    });
    await this.call((call) => this.client.feedback(request, call), options);
  }

  /** Closes the client and its connection (open calls fail); idempotent. */
  close(): void {
    if (this.stateValue === "open") {
      this.stateValue = "closed";
      this.sessions.abort();
    }
  }
}
