/**
 * How a `chat.completions.create` request maps to the cache: whether it is cacheable, its prompt and its scope.
 *
 * The Python wrapper (`cachesvc_client.openai`) implements the same mapping, so an answer cached through one
 * language is served through the other (README, "What is cached").
 */

import { contextKey } from "./context-key.js";
import type { Scope } from "./types.js";

/** Body parameters that do not change the answer (or are the prompt itself) and so stay out of the scope. */
export const NON_SCOPE_PARAMS: ReadonlySet<string> = new Set([
  "model",
  "messages",
  "stream",
  "stream_options",
  "user",
  "metadata",
  "store",
  "service_tier",
  "safety_identifier",
  "prompt_cache_key",
  "prompt_cache_retention",
]);

/** A cacheable request: the prompt to look up and the scope to look in. */
export interface CacheableRequest {
  readonly prompt: string;
  readonly scope: Scope;
}

function textOf(content: unknown): string | null {
  if (typeof content === "string") {
    return content;
  }
  if (!Array.isArray(content)) {
    return null;
  }
  const texts: string[] = [];
  for (const part of content as unknown[]) {
    if (typeof part !== "object" || part === null) {
      return null;
    }
    const { type, text } = part as { type?: unknown; text?: unknown };
    if (type !== "text" || typeof text !== "string") {
      return null;
    }
    texts.push(text);
  }
  return texts.join("\n");
}

/** Content other than none, a string or text parts (images, audio, files...). */
function hasNonTextParts(message: unknown): boolean {
  if (typeof message !== "object" || message === null) {
    return true;
  }
  const content = (message as { content?: unknown }).content;
  return content !== undefined && content !== null && textOf(content) === null;
}

/**
 * `value` with every null-valued (or undefined) object key dropped, at any depth: a message written with
 * `content: null` hashes like one without the key, as the Python wrapper's SDK message objects do.
 */
function withoutNulls(value: unknown): unknown {
  if (Array.isArray(value)) {
    return value.map(withoutNulls);
  }
  if (typeof value === "object" && value !== null && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, item]) => item !== null && item !== undefined)
        .map(([key, item]) => [key, withoutNulls(item)]),
    );
  }
  return value;
}

/**
 * The prompt and scope of a request, or null when it is not cacheable: `n` other than 1, a last message that is
 * not a user message with text content, or non-text content parts (images, audio, files) in any message.
 *
 * @param body - The first argument of `chat.completions.create`, as given.
 * @param namespace - The wrapper's namespace.
 */
export function cacheableRequest(body: Readonly<Record<string, unknown>>, namespace: string): CacheableRequest | null {
  const n = body["n"];
  if (n !== undefined && n !== null && n !== 1) {
    return null;
  }
  const messages = body["messages"];
  if (!Array.isArray(messages) || messages.length === 0 || typeof body["model"] !== "string") {
    return null;
  }
  const last: unknown = messages[messages.length - 1];
  if (typeof last !== "object" || last === null || (last as { role?: unknown }).role !== "user") {
    return null;
  }
  const prompt = textOf((last as { content?: unknown }).content);
  if (prompt === null || messages.some(hasNonTextParts)) {
    return null;
  }
  const params: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(body)) {
    if (!NON_SCOPE_PARAMS.has(key) && value !== undefined && value !== null) {
      params[key] = value;
    }
  }
  let context: string;
  try {
    context = contextKey({ params, messages: messages.slice(0, -1).map(withoutNulls) as object[] });
  } catch {
    // A parameter without a stable text form: a miss would be safe, a wrong hit would not; skip the cache.
    return null;
  }
  return { prompt, scope: { namespace, model: body["model"], context } };
}
