/**
 * Typed values the client takes and returns: plain readonly objects, never protobuf messages.
 *
 * Similarities are cosine similarities of L2-normalised embeddings, in [0, 1]. Counters are `number`s (exact up
 * to 2^53). Field names follow the Python client's (`cachesvc_client.types`) in camelCase.
 */

/** Where an entry lives; entries only ever match inside one scope (and the caller's tenant, from its API key). */
export interface Scope {
  /** The namespace; empty or absent means the server's default namespace. */
  readonly namespace?: string;
  /** The LLM the completion came from; answers of one model are not served for another. */
  readonly model?: string;
  /** Whatever else must match exactly, usually `contextKey(...)` of a system prompt and parameters. */
  readonly context?: string;
}

/** Why an explained candidate was or was not served (`LookupResult.candidates`). */
export type CandidateOutcome =
  | "UNSPECIFIED"
  | "SERVED"
  | "BELOW_THRESHOLD"
  | "EXPIRED"
  | "NOT_REACHED"
  /** Cleared the threshold, but the server's hit verifier judged it not a right answer. */
  | "REJECTED";

/** Why the server's hit verifier rejected a candidate (`Candidate.reason`, `LookupResult.rejectedReason`). */
export type RejectReason =
  | "UNSPECIFIED"
  | "NEGATION"
  | "NUMBER"
  | "UNIT"
  | "ENTITY"
  | "DIRECTION"
  | "OPPOSITE"
  | "MODEL_SCORE";

/** What producing a completion with the LLM cost; every hit on the entry saves it again. */
export interface Usage {
  readonly promptTokens: number;
  readonly completionTokens: number;
  /** In US dollars, when the caller knows its prices. */
  readonly costUsd?: number;
}

/** A cached completion. */
export interface Entry {
  /** The entry id (use it with `delete`). */
  readonly id: string;
  /** The prompt the completion was stored for. */
  readonly prompt: string;
  /** The cached completion. */
  readonly completion: string;
  /** Free-form string metadata given at store time. */
  readonly metadata: Readonly<Record<string, string>>;
  /** When the entry was stored. */
  readonly createdAt: Date;
  /** When the entry expires, or null if it never does. */
  readonly expiresAt: Date | null;
  /** How often the entry has been served. */
  readonly hitCount: number;
  /** What producing the completion cost, as stored; null when the store carried none. */
  readonly usage: Usage | null;
}

/** One of the nearest entries of an explained lookup. */
export interface Candidate {
  readonly entryId: string;
  readonly prompt: string;
  /** Its cosine similarity to the looked-up prompt, in [0, 1]. */
  readonly similarity: number;
  /** Whether it was served, and if not, why. */
  readonly outcome: CandidateOutcome;
  /** Why the hit verifier rejected it; null unless the outcome is REJECTED. */
  readonly reason: RejectReason | null;
  /** The verifier's confidence in [0, 1] that it is a right answer; null when no verifier looked at it. */
  readonly verifierScore: number | null;
}

/** Server-side stage timings of a lookup, in milliseconds. */
export interface Timings {
  /** Embedding the prompt, queueMs included (0 on the exact path). */
  readonly embedMs: number;
  readonly searchMs: number;
  readonly totalMs: number;
  /** The part of embedMs spent waiting for a model worker (0 from the server's memo). */
  readonly queueMs: number;
}

/** The answer to a lookup. */
export interface LookupResult {
  /** Whether a cached completion was served. */
  readonly hit: boolean;
  /** The served entry on a hit, else null. */
  readonly entry: Entry | null;
  /** The cached completion on a hit, null on a miss. */
  readonly completion: string | null;
  /** The best live candidate's similarity, also on a miss (0 when the scope is empty), to tune thresholds. */
  readonly similarity: number;
  /** The hit came from the exact path (same normalised prompt, similarity 1.0, no embedding). */
  readonly exact: boolean;
  /** The threshold this lookup was judged against. */
  readonly minSimilarity: number;
  /** The best live candidate's id, also on a miss; null when there was none. */
  readonly nearestId: string | null;
  /** Server-side stage timings. */
  readonly timings: Timings;
  /** The nearest candidates with their outcomes; empty unless `explain: true` was asked. */
  readonly candidates: readonly Candidate[];
  /** On a miss, why the verifier rejected the best candidate although it cleared the threshold; else null. */
  readonly rejectedReason: RejectReason | null;
  /**
   * On a miss of a single-flight lookup (`fillLeaseMs`), this caller holds the fill lease: store the answer (that
   * ends the lease) or `releaseFill(...)` with this token. null otherwise.
   */
  readonly fillToken: string | null;
  /** A miss while another caller holds the fill lease on this prompt (look up again with `fillWaitMs` to wait). */
  readonly fillPending: boolean;
  /** The lookup waited for another caller's fill (a hit then came from that caller's store). */
  readonly waitedForFill: boolean;
}

/** The answer to a store. */
export interface StoreResult {
  /** The id of the stored entry. */
  readonly id: string;
  /** An entry with the same scope and normalised prompt was overwritten. */
  readonly replaced: boolean;
  /** When the entry expires, or null if it never does. */
  readonly expiresAt: Date | null;
}

/** Counters of one namespace (or the total) of the caller's tenant. */
export interface NamespaceStats {
  readonly namespace: string;
  readonly entries: number;
  readonly bytes: number;
  readonly lookups: number;
  readonly hits: number;
  readonly exactHits: number;
  readonly semanticHits: number;
  readonly stores: number;
  readonly ttlEvictions: number;
  readonly capacityEvictions: number;
  /** Prompt + completion tokens of the entries served as hits. */
  readonly tokensSaved: number;
  /** The cost of the entries served as hits, in US dollars (entries stored with a cost only). */
  readonly costSavedUsd: number;
  /** Hits per lookup, 0 before the first lookup. */
  readonly hitRate: number;
}

/** Counters per namespace and in total, for the caller's tenant. */
export interface StatsResult {
  /** One per namespace (only the asked one when `stats({ namespace })` was used). */
  readonly namespaces: readonly NamespaceStats[];
  /** The sum over the tenant's namespaces. */
  readonly total: NamespaceStats;
}
