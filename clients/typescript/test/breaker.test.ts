/** The circuit breaker's states, on an injected clock (no sleeping). */

import assert from "node:assert/strict";
import { it } from "node:test";

import { CircuitBreaker } from "../src/breaker.js";

it("opens after consecutive failures, lets one trial through after the cooldown, and closes on its success", () => {
  let now = 0;
  const breaker = new CircuitBreaker({ failureThreshold: 3, cooldownMs: 1000, now: () => now });
  breaker.failure();
  breaker.failure();
  breaker.success();
  breaker.failure();
  breaker.failure();
  assert.equal(breaker.state, "closed");
  assert.equal(breaker.allow(), true);
  breaker.failure();
  assert.equal(breaker.state, "open");
  assert.equal(breaker.allow(), false);

  now = 999;
  assert.equal(breaker.allow(), false);
  now = 1000;
  assert.equal(breaker.state, "half-open");
  assert.equal(breaker.allow(), true);
  assert.equal(breaker.allow(), false, "only one trial at a time");
  breaker.failure();
  assert.equal(breaker.state, "open", "a failed trial reopens at once");

  now = 2000;
  assert.equal(breaker.allow(), true);
  breaker.success();
  assert.equal(breaker.state, "closed");
  assert.equal(breaker.allow(), true);
});

it("rejects nonsense settings", () => {
  assert.throws(() => new CircuitBreaker({ failureThreshold: 0 }), RangeError);
  assert.throws(() => new CircuitBreaker({ cooldownMs: -1 }), RangeError);
});
