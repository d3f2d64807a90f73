"""Fill leases in Redis, for single-flight across replicas: the first miss of a (scope, prompt) takes the lease
(`SET NX PX`), the others wait on the entry instead of calling the LLM too; the lease expires by itself if its
holder dies. Only the holder can release it (compare-and-delete in one script)."""

from __future__ import annotations

from cachesvc.backends.redis.connection import Client, redis_call
from cachesvc.backends.redis.keys import KeySpace
from cachesvc.records import ScopeKey

# KEYS: lease. ARGV: holder. Deletes the lease only if this holder still has it (it may have expired and been
# taken by another).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLeases:
    def __init__(self, *, client: Client, keys: KeySpace, timeout: float) -> None:
        self._client = client
        self._keys = keys
        self._timeout = timeout
        self._release = client.register_script(_RELEASE)

    async def acquire(self, scope: ScopeKey, normalized_prompt: str, *, holder: str, ttl_seconds: float) -> bool:
        """Takes the lease for `ttl_seconds` unless another holder has it; returns whether it was taken.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        async with redis_call(self._timeout, "take a fill lease"):
            taken = await self._client.set(self._keys.lease(scope, normalized_prompt), holder, nx=True,
                                           px=max(1, int(ttl_seconds * 1000)))
        return bool(taken)

    async def release(self, scope: ScopeKey, normalized_prompt: str, *, holder: str) -> bool:
        """Gives the lease back if `holder` still has it; returns whether it did."""
        async with redis_call(self._timeout, "release a fill lease"):
            released = await self._release(keys=[self._keys.lease(scope, normalized_prompt)], args=[holder])
        return bool(released)
