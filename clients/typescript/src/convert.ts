/** Protobuf <-> plain object conversion; the only module that reads response messages field by field. */

import { create } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

import * as pb from "./gen/cachesvc/v1/cache_pb.js";
import type {
  Candidate,
  CandidateOutcome,
  Entry,
  LookupResult,
  NamespaceStats,
  RejectReason,
  Scope,
  StatsResult,
  StoreResult,
  Usage,
} from "./types.js";

const OUTCOMES: Readonly<Record<number, CandidateOutcome>> = {
  [pb.CandidateOutcome.SERVED]: "SERVED",
  [pb.CandidateOutcome.BELOW_THRESHOLD]: "BELOW_THRESHOLD",
  [pb.CandidateOutcome.EXPIRED]: "EXPIRED",
  [pb.CandidateOutcome.NOT_REACHED]: "NOT_REACHED",
  [pb.CandidateOutcome.REJECTED]: "REJECTED",
};

const REASONS: Readonly<Record<number, RejectReason>> = {
  [pb.RejectReason.NEGATION]: "NEGATION",
  [pb.RejectReason.NUMBER]: "NUMBER",
  [pb.RejectReason.UNIT]: "UNIT",
  [pb.RejectReason.ENTITY]: "ENTITY",
  [pb.RejectReason.DIRECTION]: "DIRECTION",
  [pb.RejectReason.OPPOSITE]: "OPPOSITE",
  [pb.RejectReason.MODEL_SCORE]: "MODEL_SCORE",
};

/** null for "no reason"; reasons this client does not know yet become UNSPECIFIED. */
function reason(value: pb.RejectReason): RejectReason | null {
  return value === pb.RejectReason.UNSPECIFIED ? null : (REASONS[value] ?? "UNSPECIFIED");
}

/**
 * The shortest decimal that the wire's float32 `value` stands for.
 *
 * Similarities travel as float32, so a threshold of 0.9 comes back as 0.8999999761581421; this returns 0.9, the
 * value the sender meant, so results compare equal to the numbers users pass in (as the Python client does).
 */
export function f32(value: number): number {
  if (!Number.isFinite(value)) {
    return value;
  }
  const single = Math.fround(value);
  for (let digits = 6; digits <= 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === single) {
      return candidate;
    }
  }
  return value;
}

function date(timestamp: Timestamp | undefined): Date | null {
  return timestamp === undefined ? null : timestampDate(timestamp);
}

export function scopeToProto(scope: Scope | undefined): pb.Scope {
  return create(pb.ScopeSchema, {
    namespace: scope?.namespace ?? "",
    model: scope?.model ?? "",
    context: scope?.context ?? "",
  });
}

export function usageToProto(usage: Usage): pb.Usage {
  return create(pb.UsageSchema, {
    promptTokens: BigInt(usage.promptTokens),
    completionTokens: BigInt(usage.completionTokens),
    ...(usage.costUsd === undefined ? {} : { costUsd: usage.costUsd }),
  });
}

function usageFromProto(message: pb.Usage | undefined): Usage | null {
  if (message === undefined) {
    return null;
  }
  return {
    promptTokens: Number(message.promptTokens),
    completionTokens: Number(message.completionTokens),
    ...(message.costUsd === undefined ? {} : { costUsd: message.costUsd }),
  };
}

/** Converts a wire entry; an unset `createdAt` becomes the Unix epoch (the proto3 default). */
export function entryFromProto(message: pb.Entry): Entry {
  return {
    id: message.id,
    prompt: message.prompt,
    completion: message.completion,
    metadata: Object.freeze({ ...message.metadata }),
    createdAt: date(message.createdAt) ?? new Date(0),
    expiresAt: date(message.expiresAt),
    hitCount: Number(message.hitCount),
    usage: usageFromProto(message.usage),
  };
}

function candidateFromProto(message: pb.Candidate): Candidate {
  return {
    entryId: message.entryId,
    prompt: message.prompt,
    similarity: f32(message.similarity),
    outcome: OUTCOMES[message.outcome] ?? "UNSPECIFIED",
    reason: reason(message.reason),
    verifierScore: message.verifierScore === undefined ? null : f32(message.verifierScore),
  };
}

/** Converts a lookup response; the entry is only kept on a hit. */
export function lookupResultFromProto(message: pb.LookupResponse): LookupResult {
  const entry = message.hit && message.entry !== undefined ? entryFromProto(message.entry) : null;
  return {
    hit: message.hit,
    entry,
    completion: entry?.completion ?? null,
    similarity: f32(message.similarity),
    exact: message.exact,
    minSimilarity: f32(message.minSimilarity),
    nearestId: message.nearestId === "" ? null : message.nearestId,
    timings: {
      embedMs: message.timings?.embedMs ?? 0,
      searchMs: message.timings?.searchMs ?? 0,
      totalMs: message.timings?.totalMs ?? 0,
      queueMs: message.timings?.queueMs ?? 0,
    },
    candidates: message.candidates.map(candidateFromProto),
    rejectedReason: reason(message.rejectedReason),
    fillToken: message.fillToken === "" ? null : message.fillToken,
    fillPending: message.fillPending,
    waitedForFill: message.waitedForFill,
  };
}

export function storeResultFromProto(message: pb.StoreResponse): StoreResult {
  return { id: message.id, replaced: message.replaced, expiresAt: date(message.expiresAt) };
}

function namespaceStatsFromProto(message: pb.NamespaceStats | undefined): NamespaceStats {
  const lookups = Number(message?.lookups ?? 0n);
  const hits = Number(message?.hits ?? 0n);
  return {
    namespace: message?.namespace ?? "",
    entries: Number(message?.entries ?? 0n),
    bytes: Number(message?.bytes ?? 0n),
    lookups,
    hits,
    exactHits: Number(message?.exactHits ?? 0n),
    semanticHits: Number(message?.semanticHits ?? 0n),
    stores: Number(message?.stores ?? 0n),
    ttlEvictions: Number(message?.ttlEvictions ?? 0n),
    capacityEvictions: Number(message?.capacityEvictions ?? 0n),
    tokensSaved: Number(message?.tokensSaved ?? 0n),
    costSavedUsd: message?.costSavedUsd ?? 0,
    hitRate: lookups === 0 ? 0 : hits / lookups,
  };
}

export function statsResultFromProto(message: pb.StatsResponse): StatsResult {
  return {
    namespaces: message.namespaces.map(namespaceStatsFromProto),
    total: namespaceStatsFromProto(message.total),
  };
}
