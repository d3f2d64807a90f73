/**
 * `contextKey`: a stable hash of whatever must match exactly, for `Scope.context`.
 *
 * It gives the SAME key as the Python client's `cachesvc_client.context_key` for the same inputs, so entries
 * stored from one language are served to the other. That means reproducing Python's `json.dumps(payload,
 * sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)` byte for byte:
 * - object keys sorted by Unicode code point (JavaScript's default sort compares UTF-16 units, which orders
 *   astral characters before U+E000..U+FFFF; Python does not);
 * - numbers compare by value: an integral number is written as an integer with all its digits (`1e22` ->
 *   `10000000000000000000000`, `-0` -> `0`), any other as Python's `repr` (`0.1`, `1e-05`, `1.5e-07`);
 * - strings as JSON escapes them with ensure_ascii off (only `"`, `\` and control characters are escaped);
 * - booleans stay booleans (`true` and `1` give different keys).
 */

import { createHash } from "node:crypto";

/** A value `contextKey` can hash: what JSON can hold, plus bigint for integers past 2^53. */
export type ContextValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | readonly ContextValue[]
  | { readonly [key: string]: ContextValue | undefined };

/** The inputs of `contextKey`; each one empty or absent counts as absent. */
export interface ContextKeyInput {
  /** The system prompt, if any. */
  readonly systemPrompt?: string | null;
  /**
   * Sampling and other request parameters that change the answer (temperature, max_tokens, tools, ...): a plain
   * object whose values are `ContextValue`s (checked at run time, so SDK parameter types can be passed as they are).
   */
  readonly params?: object | null;
  /** A conversation prefix, e.g. `[{ role: "user", content: "..." }]` (plain objects); order matters. */
  readonly messages?: readonly object[] | null;
}

// Bump together with the Python client's _CANONICAL_VERSION.
const CANONICAL_VERSION = 1;

/**
 * Hashes everything a cached answer depends on besides the prompt, for `Scope.context`.
 *
 * The key is the SHA-256 of a canonical JSON form (see the module comment). Text is hashed as given (no Unicode
 * or whitespace normalisation). Object properties whose value is `undefined` are left out, as JSON does.
 *
 * @returns 64 lowercase hex characters.
 * @throws TypeError - A value of an unsupported type (function, symbol, Date, Map, class instance, `undefined`
 *   inside an array), a string with a lone surrogate (not encodable as UTF-8), or `messages` not an array.
 * @throws RangeError - A number is NaN or infinite.
 */
export function contextKey(input: ContextKeyInput = {}): string {
  const { systemPrompt, params, messages } = input;
  if (messages !== undefined && messages !== null && !Array.isArray(messages)) {
    throw new TypeError("messages must be an array of objects");
  }
  const parts: string[] = [];
  // Keys in code-point order: messages, params, system_prompt, v.
  if (messages && messages.length > 0) {
    parts.push(`"messages":[${messages.map((message, i) => canonical(message, `messages[${i}]`)).join(",")}]`);
  }
  if (params && hasKeys(params)) {
    parts.push(`"params":${canonical(params, "params")}`);
  }
  if (systemPrompt !== undefined && systemPrompt !== null && systemPrompt !== "") {
    parts.push(`"system_prompt":${canonical(systemPrompt, "systemPrompt")}`);
  }
  parts.push(`"v":${CANONICAL_VERSION}`);
  return createHash("sha256").update(`{${parts.join(",")}}`, "utf8").digest("hex");
}

/** The canonical JSON text of `value`: Python's json.dumps output for the same value. Exported for tests. */
export function canonicalJson(value: ContextValue): string {
  return canonical(value, "value");
}

function hasKeys(object: object): boolean {
  return Object.values(object).some((value) => value !== undefined);
}

function canonical(value: unknown, path: string): string {
  if (value === null) {
    return "null";
  }
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "string":
      return string(value, path);
    case "bigint":
      return value.toString();
    case "number":
      return number(value, path);
    case "object":
      break;
    default:
      throw new TypeError(`${path}: unsupported type ${typeof value}`);
  }
  if (Array.isArray(value)) {
    return `[${value.map((item, i) => {
      if (item === undefined) {
        throw new TypeError(`${path}[${i}]: undefined has no canonical form`);
      }
      return canonical(item, `${path}[${i}]`);
    }).join(",")}]`;
  }
  const prototype: unknown = Object.getPrototypeOf(value);
  if (prototype !== Object.prototype && prototype !== null) {
    throw new TypeError(`${path}: unsupported type ${(value as object).constructor?.name ?? "object"}`);
  }
  const keys = Object.keys(value)
    .filter((key) => (value as Record<string, unknown>)[key] !== undefined)
    .sort(compareCodePoints);
  return `{${keys.map((key) => `${string(key, path)}:${canonical((value as Record<string, unknown>)[key], `${path}.${key}`)}`).join(",")}}`;
}

// Python raises when such a string is encoded as UTF-8; JSON.stringify would escape it instead.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function string(value: string, path: string): string {
  if (LONE_SURROGATE.test(value)) {
    throw new TypeError(`${path}: string holds a lone surrogate (not valid Unicode text)`);
  }
  // For well-formed strings JSON.stringify escapes exactly what Python's json.dumps(ensure_ascii=False) does:
  // `"`, `\`, \b \f \n \r \t and other controls as \u00xx (lowercase hex).
  return JSON.stringify(value);
}

function number(value: number, path: string): string {
  if (!Number.isFinite(value)) {
    throw new RangeError(`${path}: ${value} has no canonical form`);
  }
  if (Number.isInteger(value)) {
    // Python writes int(value): every digit of the exact value, and 0 for -0.
    return BigInt(value).toString();
  }
  return pythonFloatRepr(value);
}

/**
 * Python's `repr(float)` for a finite, non-integral number: the shortest round-trip digits (which JavaScript's
 * number-to-string also produces), written in scientific form when the decimal exponent is < -4 or >= 16.
 */
export function pythonFloatRepr(value: number): string {
  const [mantissa = "", exponentText = "0"] = value.toExponential().split("e");
  const exponent = Number(exponentText);
  const negative = mantissa.startsWith("-");
  const digits = mantissa.replace("-", "").replace(".", "");
  const sign = negative ? "-" : "";
  if (exponent < -4 || exponent >= 16) {
    const fraction = digits.length > 1 ? `.${digits.slice(1)}` : "";
    const exponentSign = exponent < 0 ? "-" : "+";
    return `${sign}${digits[0]}${fraction}e${exponentSign}${String(Math.abs(exponent)).padStart(2, "0")}`;
  }
  if (exponent < 0) {
    return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
  }
  const whole = digits.slice(0, exponent + 1).padEnd(exponent + 1, "0");
  const fraction = digits.slice(exponent + 1);
  return `${sign}${whole}.${fraction === "" ? "0" : fraction}`;
}

function compareCodePoints(a: string, b: string): number {
  const left = Array.from(a, (c) => c.codePointAt(0) ?? 0);
  const right = Array.from(b, (c) => c.codePointAt(0) ?? 0);
  const length = Math.min(left.length, right.length);
  for (let i = 0; i < length; i++) {
    const difference = (left[i] ?? 0) - (right[i] ?? 0);
    if (difference !== 0) {
      return difference;
    }
  }
  return left.length - right.length;
}
