/** Client-side argument checks (as the Python client's `_validate.py`): bad calls fail before anything is sent. */

/**
 * Returns `value` if it is a similarity threshold in [0, 1] (0 is valid: serve the nearest live entry).
 *
 * @throws RangeError - Outside [0, 1], or NaN.
 */
export function checkMinSimilarity(value: number): number {
  if (typeof value !== "number" || !(value >= 0 && value <= 1)) {
    throw new RangeError(`minSimilarity must lie in [0, 1], got ${String(value)}`);
  }
  return value;
}

/**
 * Returns `value` if it is a valid TTL in whole seconds (0 means the entry never expires).
 *
 * @throws TypeError - Not an integer number.
 * @throws RangeError - Negative.
 */
export function checkTtlSeconds(value: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw new TypeError(`ttlSeconds must be an integer, got ${String(value)}`);
  }
  if (value < 0) {
    throw new RangeError(`ttlSeconds must be >= 0 (0 = never expires), got ${value}`);
  }
  return value;
}

/**
 * Returns `value` if it is a usable deadline in milliseconds; null means no deadline.
 *
 * @throws RangeError - Not a positive finite number.
 */
export function checkTimeoutMs(value: number | null): number | null {
  if (value !== null && !(typeof value === "number" && Number.isFinite(value) && value > 0)) {
    throw new RangeError(`timeoutMs must be a positive number of milliseconds or null, got ${String(value)}`);
  }
  return value;
}

/**
 * Returns `value` if it is a token count (a non-negative safe integer).
 *
 * @throws RangeError - Negative, fractional or too large.
 */
export function checkTokens(name: string, value: number): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${name} must be a non-negative integer, got ${String(value)}`);
  }
  return value;
}

/**
 * Returns `value` if it is a cost in US dollars (finite, non-negative).
 *
 * @throws RangeError - Negative, NaN or infinite.
 */
export function checkCostUsd(value: number): number {
  if (typeof value !== "number" || !(Number.isFinite(value) && value >= 0)) {
    throw new RangeError(`costUsd must be a finite number >= 0, got ${String(value)}`);
  }
  return value;
}

/**
 * Returns `value` rounded to whole milliseconds if it is a fill lease or wait in (0, 3600000] ms (as the
 * Python client's `fill_lease` / `fill_wait` in (0, 3600] seconds).
 *
 * @throws RangeError - Not a number in (0, 3600000].
 */
export function checkFillMs(name: string, value: number): number {
  if (typeof value !== "number" || !(value > 0 && value <= 3_600_000)) {
    throw new RangeError(`${name} must lie in (0, 3600000] milliseconds, got ${String(value)}`);
  }
  return Math.max(1, Math.round(value));
}
