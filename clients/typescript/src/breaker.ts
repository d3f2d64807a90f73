/** A small circuit breaker, so a cache that is down costs the application one short deadline, not one per call. */

/** Options of a `CircuitBreaker`. */
export interface BreakerOptions {
  /** Consecutive failed cache calls that open the breaker (default 5). */
  readonly failureThreshold?: number;
  /** How long an open breaker skips the cache before letting one trial call through, in ms (default 10000). */
  readonly cooldownMs?: number;
  /** Clock in milliseconds (default `Date.now`); tests pass their own. */
  readonly now?: () => number;
}

export type BreakerState = "closed" | "open" | "half-open";

/**
 * closed (calls go through) -> `failureThreshold` consecutive failures -> open (calls skipped) -> after
 * `cooldownMs` half-open: one trial call goes through; its success closes the breaker, its failure reopens it.
 */
export class CircuitBreaker {
  private readonly failureThreshold: number;
  private readonly cooldownMs: number;
  private readonly now: () => number;
  private failures = 0;
  private openedAt: number | null = null;
  private trialInFlight = false;

  constructor(options: BreakerOptions = {}) {
    this.failureThreshold = options.failureThreshold ?? 5;
    this.cooldownMs = options.cooldownMs ?? 10_000;
    this.now = options.now ?? Date.now;
    if (!Number.isSafeInteger(this.failureThreshold) || this.failureThreshold < 1) {
      throw new RangeError(`failureThreshold must be a positive integer, got ${this.failureThreshold}`);
    }
    if (!(this.cooldownMs >= 0)) {
      throw new RangeError(`cooldownMs must be >= 0, got ${this.cooldownMs}`);
    }
  }

  get state(): BreakerState {
    if (this.openedAt === null) {
      return "closed";
    }
    return this.now() - this.openedAt >= this.cooldownMs ? "half-open" : "open";
  }

  /** Whether a cache call may be made now (in half-open, only one trial at a time). */
  allow(): boolean {
    const state = this.state;
    if (state === "closed") {
      return true;
    }
    if (state === "half-open" && !this.trialInFlight) {
      this.trialInFlight = true;
      return true;
    }
    return false;
  }

  success(): void {
    this.failures = 0;
    this.openedAt = null;
    this.trialInFlight = false;
  }

  failure(): void {
    this.failures += 1;
    if (this.trialInFlight || this.failures >= this.failureThreshold) {
      this.openedAt = this.now();
    }
    this.trialInFlight = false;
  }
}
