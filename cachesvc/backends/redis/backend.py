"""RedisBackend: the Backend protocol over the Redis Query Engine, so that many replicas share one cache.

Layout (keys.py): each tenant has one index `P:idx:{tag}` over the hashes `P:c:{tag}:<id>` (vector, scope digest,
selector tags, expiry time), and one string per exact prompt `P:x:{tag}:<hash(scope, prompt)>` -> entry id. A store
writes the hash and its exact key in one Lua script (both or neither, with the same expiry); a delete removes both.

Expiry: keys get a PEXPIRE of the entry's remaining TTL, and every search also filters on the expiry time, because
Redis reclaims expired keys lazily and an expired key can still appear in `FT.SEARCH`.

Eviction (maxmemory with an allkeys policy): Redis removes single keys, and the index drops a hash the moment it
is gone. If the entry's hash goes, its exact key points at nothing and reads as a miss (and is removed when seen);
if the exact key goes, the entry is still found by similarity. Nothing half-written is ever served.

Capacity is Redis' (maxmemory and its policy): the backend declares it, and core enforces no budget of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import Any, cast

import numpy as np
from redis import exceptions as rex
from redis.asyncio.cluster import RedisCluster

from cachesvc.backends.persistence import ModelIdentity
from cachesvc.backends.protocol import Capabilities
from cachesvc.backends.redis import codec
from cachesvc.backends.redis.connection import Client, RedisOptions, redacted_url, redis_call
from cachesvc.backends.redis.keys import KeySpace, short_hash
from cachesvc.backends.wal import StorageError
from cachesvc.embedding.protocol import Vector
from cachesvc.errors import CacheError, InvalidRequest, NotReady
from cachesvc.lifecycle import State
from cachesvc.records import FEEDBACK_REPORTS_KEPT, Entry, FeedbackReport, Match, ScopeKey, ScopeSelector, Usage

log = logging.getLogger(__name__)

# KEYS: entry, exact key, hits, the tenant's index marker. ARGV: entry id, TTL in ms (0 = none), the tenant's entry
# key prefix, its hits key prefix, hit count, last use, then field, value, ... Returns the replaced entry's fields
# and hits (same scope and prompt, another id) or nil; or -1, writing nothing, when the index marker is missing
# (this shard lost its data, or Redis evicted the marker): the index must be made (again) first.
_PUT = """
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
local old = redis.call('GET', KEYS[2])
local replaced = false
if old and old ~= ARGV[1] then
  local old_key, old_hits = ARGV[3] .. old, ARGV[4] .. old
  replaced = redis.call('HGETALL', old_key)
  if #replaced == 0 then
    replaced = false
  else
    for _, v in ipairs(redis.call('HGETALL', old_hits)) do table.insert(replaced, v) end
  end
  redis.call('DEL', old_key, old_hits)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('HSET', KEYS[3], 'hits', ARGV[5], 'lu', ARGV[6])
redis.call('SET', KEYS[2], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
return replaced
"""

# KEYS: entry, hits. ARGV: entry id. Deletes the entry, its hits and the exact key that points at it; returns its
# fields or nil.
_DELETE = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return false end
local exact = redis.call('HGET', KEYS[1], 'xk')
for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do table.insert(fields, v) end
redis.call('DEL', KEYS[1], KEYS[2])
if exact and redis.call('GET', exact) == ARGV[1] then redis.call('DEL', exact) end
return fields
"""

# KEYS: entry, hits. An entry with its hits, or nil.
_GET = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return false end
for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do table.insert(fields, v) end
return fields
"""

# KEYS: exact key. ARGV: the tenant's entry key prefix, its hits key prefix, then the names of the fields to read.
# The entry the exact key points at, with its hits, in one round trip; a key left pointing at an evicted entry is
# removed. Only the named fields: an exact hit needs no vector (1.5 KB of the hash at 384 dimensions).
_GET_EXACT = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local values = redis.call('HMGET', ARGV[1] .. id, unpack(ARGV, 3))
local fields = {}
for i, v in ipairs(values) do
  if v then
    table.insert(fields, ARGV[i + 2])
    table.insert(fields, v)
  end
end
if #fields == 0 then
  redis.call('DEL', KEYS[1])
  return false
end
for _, v in ipairs(redis.call('HGETALL', ARGV[2] .. id)) do table.insert(fields, v) end
return fields
"""

# KEYS: entry, hits. ARGV: when. Returns the hit count after this hit, or -1 for an entry deleted meanwhile (never
# recreated); the hits expire with the entry.
_TOUCH = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return -1 end
local hits = redis.call('HINCRBY', KEYS[2], 'hits', 1)
redis.call('HSET', KEYS[2], 'lu', ARGV[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return hits
"""

# KEYS: entry. ARGV: entry id, the feedback field, then one report: prompt, similarity, correct (1 or 0), and the
# number of reports kept. Adds the report to the entry's feedback as `EntryFeedback.with_report` does, its lsn the
# entry's count of reports (codec.FEEDBACK has the shape), and returns the new feedback; nil, writing nothing, when
# the entry is gone. One script, so reports from several replicas at once are all counted; HSET keeps the key's
# expiry.
_ADD_FEEDBACK = """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return false end
local raw = redis.call('HGET', KEYS[1], ARGV[2])
local reports, wrong_prompts, wrong, right, lsn = {}, {}, 0, 0, 0
if raw and raw ~= '' then
  local state = cmsgpack.unpack(raw)
  reports, wrong_prompts, wrong, right, lsn = state[1], state[2], state[3], state[4], state[5]
end
local prompt, correct = ARGV[3], ARGV[5] == '1'
table.insert(reports, {prompt, tonumber(ARGV[4]), correct})
while #reports > tonumber(ARGV[6]) do table.remove(reports, 1) end
if correct then
  right = right + 1
else
  wrong = wrong + 1
  local known = false
  for _, p in ipairs(wrong_prompts) do
    if p == prompt then known = true break end
  end
  if not known then table.insert(wrong_prompts, prompt) end
end
local state = cmsgpack.pack({reports, wrong_prompts, wrong, right, lsn + 1})
redis.call('HSET', KEYS[1], ARGV[2], state)
return state
"""

MAX_PENDING_TOUCHES = 10_000
# How long after an exact hit its hit is sent to Redis. Sent on the event loop's next turn, the command delayed
# the reply it follows by ~0.1-0.2 ms on a 2-core box, as the servicer's accounting did (servicer.py,
# ACCOUNTING_DELAY_SECONDS; bench/RESULTS.md, "Lookup overhead, fifth round").
HIT_RECORD_DELAY_SECONDS = 0.001

# HNSW candidates kept while searching (the engine's own default). On real prompt embeddings it finds 99.2-99.3% of
# the exact top 4 and 99.9-100% of the near duplicates (similarity >= 0.82) at 10k and 100k entries, for a third to
# half the Redis time of 64 (bench/RESULTS.md, "Redis backend: one round trip per semantic miss").
EF_RUNTIME = 10
SHARE_REFRESH = 30.0  # seconds between judgements of how much of its index a scope holds
BATCHES_MIN_ENTRIES = 1000  # below this, brute force over the scope is cheap anyway
_RETURN_CONTENT: list[str] = ["RETURN", str(len(codec.RETURNED)), *codec.RETURNED]


class ModelMismatch(StorageError):
    """The Redis cache was built with another embedding model."""


def _missing_index(exc: rex.ResponseError) -> bool:
    text = str(exc).lower()
    return "no such index" in text or "unknown index" in text


class RedisBackend:
    """Entries in Redis, shared by every replica that points at the same Redis and prefix."""

    def __init__(self, *, client: Client, options: RedisOptions, dimension: int, model: ModelIdentity,
                 clock_now: Callable[[], float], hnsw_m: int = 16, hnsw_ef_construction: int = 200,
                 ef_runtime: int = EF_RUNTIME) -> None:
        """Args:
            client: the process' Redis client (its pool); not closed here, its owner closes it.
            model: what the cache's vectors come from; a Redis that holds another model's cache is refused.
            clock_now: the time expiry is judged by (filters and TTLs).
        """
        self._client = client
        self._options = options
        self._keys = KeySpace(options.prefix)
        self._dimension = dimension
        self._model = model
        self._now = clock_now
        self._hnsw = ("M", str(hnsw_m), "EF_CONSTRUCTION", str(hnsw_ef_construction))
        self._ef_runtime = ef_runtime
        self._indexed: set[str] = set()  # tenant tags whose index this process has seen exist
        self._touches: set[asyncio.Task[None]] = set()
        self._shares: dict[str, tuple[float, bool]] = {}  # scope digest -> (when judged, holds most of the index)
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)
        self._get_exact = client.register_script(_GET_EXACT)
        self._get_one = client.register_script(_GET)
        self._touch = client.register_script(_TOUCH)
        self._add_feedback = client.register_script(_ADD_FEEDBACK)
        self._state = State.NEW

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(semantic_search=True, durable=True, shared_between_replicas=True,
                            manages_capacity=True)

    @property
    def keys(self) -> KeySpace:
        return self._keys

    def _call(self, what: str) -> Any:
        if self._state is not State.RUNNING:
            raise NotReady("the backend is not running")
        return redis_call(self._options.timeout, what)

    # Lifecycle

    async def start(self) -> None:
        """Checks that Redis answers, has the query engine, and holds a cache of this model (or none yet).

        Raises:
            Unavailable: Redis cannot be reached.
            ModelMismatch: the cache in Redis was built with another model.
            StorageError: Redis has no vector search (RediSearch / Redis Query Engine).
        """
        if self._state is not State.NEW:
            raise RuntimeError(f"cannot start a backend that is {self._state.value}")
        self._state = State.RUNNING
        async with self._call("answer at start-up"):
            try:
                await self._client.execute_command("FT._LIST")
            except rex.ResponseError as exc:
                raise StorageError(f"{redacted_url(self._options.url)} has no vector search (FT.* commands): "
                                   "use Redis 8, Redis Stack or a Redis with the RediSearch module") from exc
            await self.bind_model()

    async def bind_model(self) -> bool:
        """Records this server's model in Redis, or checks it against the one recorded; returns True when it
        had to be recorded (an empty Redis: a new one, or one that lost its data).

        Raises:
            ModelMismatch: Redis holds a cache built with another model.
        """
        mine = self._model.to_json()
        created = bool(await self._client.set(self._keys.model, mine, nx=True))
        if created:
            return True
        recorded = await self._client.get(self._keys.model)
        if recorded is not None and ModelIdentity(**_json(recorded)) != self._model:
            theirs = ModelIdentity(**_json(recorded))
            raise ModelMismatch(
                f"the cache in {redacted_url(self._options.url)} (prefix {self._options.prefix!r}) was built with "
                f"model {theirs.name} ({theirs.dimension}-d, checksum {theirs.checksum[:12]}), but this server runs "
                f"{self._model.name} ({self._model.dimension}-d, checksum {self._model.checksum[:12]}). Start with "
                f"the model it was built with (--model-dir), use another --redis-prefix for this model, or delete "
                f"the old cache: redis-cli --scan --pattern '{self._options.prefix}:*' | xargs redis-cli unlink")
        return False

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._options.timeout):
                await self.settle()
        for task in list(self._touches):
            task.cancel()
        self._state = State.CLOSED

    async def ping(self) -> None:
        """Raises Unavailable unless Redis answers; re-records the model if Redis came back empty."""
        async with self._call("answer a health check"):
            if await self.bind_model():
                # Redis lost its data (a restart without persistence, a flush): indexes must be made again.
                self._indexed.clear()

    def new_id(self, scope: ScopeKey) -> str:
        return self._keys.new_id(scope)

    # ExactStore

    async def get(self, entry_id: str) -> Entry | None:
        if not self._keys.is_entry_id(entry_id):
            return None
        async with self._call("read an entry"):
            flat = await self._get_one(keys=[self._keys.entry(entry_id), self._keys.hits(entry_id)])
        return codec.decode(codec.pairs(flat)) if flat else None

    async def get_exact(self, scope: ScopeKey, normalized_prompt: str) -> Entry | None:
        tag = self._keys.tag(scope.tenant)
        async with self._call("read an exact entry"):
            flat = await self._get_exact(keys=[self._keys.exact(scope, normalized_prompt)],
                                         args=[self._keys.entry_prefix(tag), self._keys.hits_prefix(tag),
                                               *codec.RETURNED])
        return codec.decode(codec.pairs(flat)) if flat else None

    async def put(self, entry: Entry, vector: Vector) -> Entry | None:
        if vector.shape != (self._dimension,):
            raise InvalidRequest(f"vector has shape {vector.shape}, the index holds {self._dimension}-d vectors")
        entry.last_used_at = entry.last_used_at or entry.created_at
        tag = self._keys.tag(entry.scope.tenant)
        exact_key = self._keys.exact(entry.scope, entry.normalized_prompt)
        fields = codec.encode(entry, vector, exact_key=exact_key)
        ttl_ms = 0
        if entry.expires_at is not None:
            # Relative to the clock the expiry was set by, so Redis' clock (or a test's) cannot shift it.
            ttl_ms = max(1, math.ceil((entry.expires_at - self._now()) * 1000))
        hits = codec.encode_hits(entry)
        args: list[Any] = [entry.id, ttl_ms, self._keys.entry_prefix(tag), self._keys.hits_prefix(tag),
                           hits[codec.HITS], hits[codec.LAST_USED]]
        for name, value in fields.items():
            args += [name, value]
        keys = [self._keys.entry(entry.id), exact_key, self._keys.hits(entry.id), self._keys.index_marker(tag)]
        async with self._call("store an entry"):
            await self._ensure_index(tag)
            flat = await self._put(keys=keys, args=args)
            if flat == -1:
                # The index is gone with its shard's data (a restart without persistence, a flush): an entry
                # written now would not be searchable, so make the index first.
                self._indexed.discard(tag)
                await self._ensure_index(tag)
                flat = await self._put(keys=keys, args=args)
        return codec.decode(codec.pairs(flat)) if isinstance(flat, list) else None

    async def delete(self, entry_ids: Collection[str]) -> list[Entry]:
        ids = [i for i in dict.fromkeys(entry_ids) if self._keys.is_entry_id(i)]
        if not ids:
            return []
        deleted: list[Entry] = []
        for start in range(0, len(ids), 256):  # each batch gets the full timeout: a scope may hold many
            chunk = ids[start:start + 256]
            async with self._call("delete entries"):
                if isinstance(self._client, RedisCluster):
                    replies = await asyncio.gather(*(
                        self._delete(keys=[self._keys.entry(i), self._keys.hits(i)], args=[i]) for i in chunk))
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for entry_id in chunk:
                            await self._delete(keys=[self._keys.entry(entry_id), self._keys.hits(entry_id)],
                                               args=[entry_id], client=pipe)
                        replies = await pipe.execute()
            deleted += [e for e in (codec.decode(codec.pairs(r)) for r in replies if r) if e is not None]
        return deleted

    async def touch(self, entry: Entry, now: float, *, from_search: bool = False) -> None:
        """Records a hit.

        An entry read with its hit count (`get`, `get_exact`) has it bumped here, and the hit is recorded in the
        background, once the reply has left: hit counts are statistics, not answers, so an exact hit does not wait a
        second round trip for them (`settle()` waits for those in flight). A search reads no hit counts (a miss
        needs none), so the entry it served waits for the recording script, which returns the count after this hit:
        still one round trip, bounded by the Redis timeout like any other (then Unavailable).
        """
        entry.last_used_at = now
        if from_search:
            async with self._call("record a hit"):
                hits = await self._touch(keys=[self._keys.entry(entry.id), self._keys.hits(entry.id)],
                                         args=[repr(now)])
            # -1: deleted since the search found it. It is served all the same; its count goes with it.
            count = int(hits)
            entry.hit_count = count if count >= 0 else entry.hit_count + 1
            return
        entry.hit_count += 1
        if len(self._touches) >= MAX_PENDING_TOUCHES:
            return  # Redis is slow or gone: drop statistics rather than pile up tasks
        task = asyncio.get_running_loop().create_task(self._record_hit(entry.id, now))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)

    async def _record_hit(self, entry_id: str, now: float) -> None:
        await asyncio.sleep(HIT_RECORD_DELAY_SECONDS)  # once the reply that served the hit has left
        try:
            async with self._call("record a hit"):
                await self._touch(keys=[self._keys.entry(entry_id), self._keys.hits(entry_id)], args=[repr(now)])
        except CacheError as exc:
            log.debug("hit not recorded: %s", exc)

    async def settle(self) -> None:
        """Waits until the hits recorded so far are in Redis."""
        if self._touches:
            await asyncio.gather(*list(self._touches), return_exceptions=True)

    # SemanticStore

    async def search(self, scope: ScopeKey, vector: Vector, k: int, *, with_vectors: bool = False) -> list[Match]:
        tag = self._keys.tag(scope.tenant)
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        policy = "HYBRID_POLICY BATCHES " if await self._scope_dominates(scope, tag) else ""
        # The scope and the expiry are a prefilter: KNN ranks only live entries of this scope.
        query = (f"(@{codec.SCOPE}:{{{scope.digest}}} @{codec.EXPIRES}:[{self._now()!r} +inf])"
                 f"=>[KNN {int(k)} @{codec.VECTOR} $vec {policy}EF_RUNTIME {self._ef_runtime} AS __distance]")
        returned = [*codec.RETURNED, "__distance", *([codec.VECTOR] if with_vectors else [])]
        async with self._call("search"):
            try:
                reply = await self._ft("FT.SEARCH", tag, query, "PARAMS", "2", "vec", blob,
                                       "SORTBY", "__distance", "ASC", "RETURN", str(len(returned)), *returned,
                                       "LIMIT", "0", str(int(k)), "DIALECT", "2")
            except rex.ResponseError as exc:
                if _missing_index(exc):
                    self._indexed.discard(tag)
                    return []
                raise
        # The entries come without their hit counts, which live outside the index: reading them would cost every
        # lookup a second round trip, and only a served entry's count is ever reported (`touch` returns it).
        matches = []
        for fields in (codec.pairs(flat) for flat in reply[2::2]):
            entry = codec.decode(fields)
            distance = fields.get(b"__distance")
            if entry is None or distance is None:
                continue  # evicted or expired while the search ran
            # The one place a distance becomes a similarity: COSINE distance = 1 - cosine similarity.
            similarity = 1.0 - float(distance)
            raw_vector = fields.get(codec.VECTOR.encode())
            matches.append(Match(entry.id, similarity,
                                 codec.decode_vector(raw_vector) if with_vectors and raw_vector else None, entry))
        return matches

    async def _scope_dominates(self, scope: ScopeKey, tag: str) -> bool:
        """Whether the scope holds most of its tenant's index, judged at most every SHARE_REFRESH seconds.

        With a filter, the query engine either scores every entry that passes it (ad hoc brute force) or walks
        the HNSW graph in batches and filters those. Left to itself it brute-forces even a filter that passes
        the whole index (1.3 ms of Redis CPU per query at 10k entries here, against 0.15 ms in batches); but
        batches are slow for a small scope in a large index. So: batches when the scope is most of the index.
        """
        now = time.monotonic()
        known = self._shares.get(scope.digest)
        if known is not None and now - known[0] < SHARE_REFRESH:
            return known[1]
        try:
            async with self._call("size a scope"):
                in_scope = await self._ft("FT.SEARCH", tag, f"@{codec.SCOPE}:{{{scope.digest}}}", "LIMIT", "0", "0",
                                          "DIALECT", "2")
                in_index = await self._ft("FT.SEARCH", tag, "*", "LIMIT", "0", "0", "DIALECT", "2")
            dominates = int(in_scope[0]) >= BATCHES_MIN_ENTRIES and int(in_scope[0]) * 2 >= int(in_index[0])
        except (CacheError, rex.ResponseError):
            dominates = False  # the search itself reports what is wrong
        if len(self._shares) > 100_000:
            self._shares.clear()
        self._shares[scope.digest] = (now, dominates)
        return dominates

    # FeedbackStore

    async def add_feedback(self, entry: Entry, report: FeedbackReport) -> bool:
        """Adds a report to the entry's feedback in Redis (as durable as Redis is) and sets `entry.feedback` to
        the result, which includes every other replica's reports so far."""
        if not self._keys.is_entry_id(entry.id):
            return False
        args: list[Any] = [entry.id, codec.FEEDBACK, report.prompt, repr(report.similarity), int(report.correct),
                           FEEDBACK_REPORTS_KEPT]
        async with self._call("record feedback"):
            state = await self._add_feedback(keys=[self._keys.entry(entry.id)], args=args)
        if state is None:
            return False
        entry.feedback = codec.decode_feedback(state)
        return True

    async def vector_of(self, entry_id: str) -> Vector | None:
        if not self._keys.is_entry_id(entry_id):
            return None
        async with self._call("read a vector"):
            raw = await self._client.hget(self._keys.entry(entry_id), codec.VECTOR)
        return codec.decode_vector(raw) if isinstance(raw, bytes) and raw else None

    # Inventory

    async def usage(self) -> Usage:
        """Entries across tenants (as the indexes count them) and Redis' own memory use."""
        async with self._call("report usage"):
            tags = [t.decode() if isinstance(t, bytes) else t for t in await self._client.smembers(self._keys.tenants)]
            entries = 0
            for tag in tags:
                try:
                    info = codec.pairs(await self._ft("FT.INFO", tag))
                except rex.ResponseError as exc:
                    if _missing_index(exc):
                        continue
                    raise
                entries += int(float(info.get(b"num_docs", b"0")))
            if isinstance(self._client, RedisCluster):
                infos = await self._client.info("memory", target_nodes=RedisCluster.PRIMARIES)
                used = sum(int(i.get("used_memory", 0)) for i in infos.values())
            else:
                used = int((await self._client.info("memory")).get("used_memory", 0))
        return Usage(entries=entries, bytes=used)

    async def usage_by_namespace(self, tenant: str) -> dict[str, Usage]:
        tag = self._keys.tag(tenant)
        async with self._call("report usage"):
            try:
                reply = await self._ft("FT.AGGREGATE", tag, f"@{codec.EXPIRES}:[{self._now()!r} +inf]",
                                       "LOAD", "2", "@namespace", "@size_bytes",
                                       "GROUPBY", "1", "@namespace",
                                       "REDUCE", "COUNT", "0", "AS", "n",
                                       "REDUCE", "SUM", "1", "@size_bytes", "AS", "b", "DIALECT", "2")
            except rex.ResponseError as exc:
                if _missing_index(exc):
                    return {}
                raise
        found: dict[str, Usage] = {}
        for row in reply[1:]:
            fields = codec.pairs(row)
            found[fields[b"namespace"].decode()] = Usage(entries=int(fields[b"n"]), bytes=int(float(fields[b"b"])))
        return found

    async def least_recently_used(self, limit: int) -> list[Entry]:
        return []  # capacity is Redis' (manages_capacity): its eviction policy picks victims

    async def expired(self, now: float, limit: int) -> list[Entry]:
        return []  # Redis expires the keys itself (PEXPIRE); searches filter on the expiry time meanwhile

    async def select(self, selector: ScopeSelector) -> list[Entry]:
        tag = self._keys.tag(selector.tenant)
        query = f"@{codec.NAMESPACE_TAG}:{{{short_hash(selector.namespace)}}}"
        if selector.model is not None:
            query += f" @{codec.MODEL_TAG}:{{{short_hash(selector.model)}}}"
        if selector.context is not None:
            query += f" @{codec.CONTEXT_TAG}:{{{short_hash(selector.context)}}}"
        found: list[Entry] = []
        page = 1000
        offset = 0
        while True:
            async with self._call("select entries"):
                try:
                    reply = await self._ft("FT.SEARCH", tag, query, *_RETURN_CONTENT, "LIMIT", str(offset),
                                           str(page), "DIALECT", "2")
                except rex.ResponseError as exc:
                    if _missing_index(exc):
                        return []
                    raise
            rows = reply[2::2]
            found += [e for e in (codec.decode(codec.pairs(r)) for r in rows) if e is not None]
            offset += page
            if len(rows) < page:
                return [e for e in found if selector.matches(e.scope)]

    # Index

    async def _ft(self, command: str, tag: str, *args: Any) -> Any:
        """Runs an `FT.*` command on the tenant's index, on the shard that holds it."""
        index = self._keys.index(tag)
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(index)
            return await cast(Any, self._client).execute_command(command, index, *args, target_nodes=node)
        return await cast(Any, self._client).execute_command(command, index, *args)

    async def _ensure_index(self, tag: str) -> None:
        if tag in self._indexed:
            return
        schema = [
            codec.SCOPE, "TAG", codec.NAMESPACE_TAG, "TAG", codec.MODEL_TAG, "TAG", codec.CONTEXT_TAG, "TAG",
            codec.EXPIRES, "NUMERIC",
            codec.VECTOR, "VECTOR", "HNSW", str(6 + len(self._hnsw)), "TYPE", "FLOAT32",
            "DIM", str(self._dimension), "DISTANCE_METRIC", "COSINE", *self._hnsw,
        ]
        try:
            await self._ft("FT.CREATE", tag, "ON", "HASH", "PREFIX", "1", self._keys.entry_prefix(tag),
                           "SCHEMA", *schema)
        except rex.ResponseError as exc:
            if "already exists" not in str(exc).lower():
                raise
        # On the index's own shard: whoever loses the index loses the marker too, and stores notice.
        await self._client.set(self._keys.index_marker(tag), b"1")
        await self._client.sadd(self._keys.tenants, tag)
        self._indexed.add(tag)


def _json(raw: bytes | str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise StorageError("the model record in Redis is not a JSON object")
    return value
