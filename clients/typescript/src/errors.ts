/**
 * The client's error tree, and the one place gRPC status codes are translated into it.
 *
 *     CacheClientError          any error the server (or the transport) reported; carries `code` and `details`
 *     ├── InvalidArgument       the request was rejected as malformed (details name the field)
 *     ├── NotFoundError         no such entry for this caller
 *     ├── Unauthenticated       missing or unknown API key
 *     ├── PermissionDenied      the API key may not do this
 *     ├── ResourceExhausted     the server is overloaded and shed the call (retryable)
 *     ├── Unavailable           the server cannot be reached, or is starting or stopping (retryable)
 *     ├── DeadlineExceeded      the call's deadline passed before an answer arrived
 *     └── Unimplemented         the server does not implement this call (e.g. `feedback` on older servers)
 *
 * Any other status code gives `CacheClientError` itself. The names mirror the Python client's
 * (`cachesvc_client.errors`). Client-side argument checks throw `RangeError` or `TypeError` before anything is
 * sent, as the Python client raises `ValueError` / `TypeError`.
 */

import { Code, ConnectError } from "@connectrpc/connect";

/** gRPC status code names, as the server and the Python client (`grpc.StatusCode.name`) spell them. */
export type StatusName =
  | "OK"
  | "CANCELLED"
  | "UNKNOWN"
  | "INVALID_ARGUMENT"
  | "DEADLINE_EXCEEDED"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "ABORTED"
  | "OUT_OF_RANGE"
  | "UNIMPLEMENTED"
  | "INTERNAL"
  | "UNAVAILABLE"
  | "DATA_LOSS"
  | "UNAUTHENTICATED";

const NAMES: readonly StatusName[] = [
  "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
  "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

/** Root of every error the client throws for a failed call. */
export class CacheClientError extends Error {
  /** Whether retrying the same call later may succeed. */
  readonly retryable: boolean = false;
  /** The gRPC status code (numeric, as in `@connectrpc/connect`'s `Code`), or null when none was reported. */
  readonly code: Code | null;
  /** The status code's name (`"INVALID_ARGUMENT"`, ...), or null. */
  readonly status: StatusName | null;
  /** The server's (or transport's) error message. */
  readonly details: string;

  constructor(details: string, options: { code?: Code | null; cause?: unknown } = {}) {
    const code = options.code ?? null;
    const status = code === null ? null : (NAMES[code] ?? null);
    super(status === null ? details : `${status}: ${details}`, { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

/** The server rejected the request as malformed. */
export class InvalidArgument extends CacheClientError {}

/** The addressed entry does not exist for this caller. */
export class NotFoundError extends CacheClientError {}

/** No API key, or one the server does not know. */
export class Unauthenticated extends CacheClientError {}

/** The API key is known but may not perform this operation. */
export class PermissionDenied extends CacheClientError {}

/** The server is overloaded and shed this call; retry later. */
export class ResourceExhausted extends CacheClientError {
  override readonly retryable: boolean = true;
}

/** The server is unreachable, starting or stopping; retry later. */
export class Unavailable extends CacheClientError {
  override readonly retryable: boolean = true;
}

/** The call's deadline passed before an answer arrived. */
export class DeadlineExceeded extends CacheClientError {}

/** The server does not implement this call (servers may answer `feedback` so until they support it). */
export class Unimplemented extends CacheClientError {}

const BY_CODE: ReadonlyMap<Code, typeof CacheClientError> = new Map<Code, typeof CacheClientError>([
  [Code.InvalidArgument, InvalidArgument],
  [Code.NotFound, NotFoundError],
  [Code.Unauthenticated, Unauthenticated],
  [Code.PermissionDenied, PermissionDenied],
  [Code.ResourceExhausted, ResourceExhausted],
  [Code.Unavailable, Unavailable],
  [Code.DeadlineExceeded, DeadlineExceeded],
  [Code.Unimplemented, Unimplemented],
]);

/**
 * Translates whatever a generated client call threw into the client's tree.
 *
 * @param error - The thrown value (usually a `ConnectError`).
 * @returns The matching `CacheClientError` subclass instance (not thrown), with the original as `cause`.
 */
export function fromRpcError(error: unknown): CacheClientError {
  if (error instanceof CacheClientError) {
    return error;
  }
  const connectError = ConnectError.from(error);
  const ErrorClass = BY_CODE.get(connectError.code) ?? CacheClientError;
  return new ErrorClass(connectError.rawMessage, { code: connectError.code, cause: error });
}
