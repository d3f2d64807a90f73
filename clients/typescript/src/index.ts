/**
 * cachesvc-client: the cachesvc semantic cache from Node.js.
 *
 * `CacheClient` (lookup, store, delete, deleteScope, stats, feedback), `contextKey` (the same hash as the Python
 * client's `context_key`), typed results and errors. The openai SDK wrapper is in `cachesvc-client/openai`.
 */

export {
  CacheClient,
  DEFAULT_TARGET,
  DEFAULT_TIMEOUT_MS,
  type CacheClientOptions,
  type CallTimeout,
  type ClientState,
  type DeleteScopeOptions,
  type FeedbackOptions,
  type LookupOptions,
  type ReleaseFillOptions,
  type StatsOptions,
  type StoreOptions,
} from "./client.js";
export { contextKey, type ContextKeyInput, type ContextValue } from "./context-key.js";
export {
  CacheClientError,
  DeadlineExceeded,
  InvalidArgument,
  NotFoundError,
  PermissionDenied,
  ResourceExhausted,
  Unauthenticated,
  Unavailable,
  Unimplemented,
  type StatusName,
} from "./errors.js";
export type {
  Candidate,
  CandidateOutcome,
  Entry,
  LookupResult,
  NamespaceStats,
  RejectReason,
  Scope,
  StatsResult,
  StoreResult,
  Timings,
  Usage,
} from "./types.js";
