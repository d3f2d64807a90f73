"""Where things live in Redis. Every key of a tenant carries the tenant's hash tag, so on a Redis Cluster a
tenant's entries, exact keys, counters and index sit on one shard (RediSearch 2.x in OSS cluster mode routes
`FT.*` by the index name and an index sees only its own shard's keys)."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from cachesvc.backends.leases import LeaseKey
from cachesvc.records import ScopeKey

TAG_CHARS = 16  # hex characters of a tenant's tag (64 bits)
_ID = re.compile(rf"[0-9a-f]{{{TAG_CHARS + 32}}}")


def short_hash(text: str, chars: int = TAG_CHARS) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


@dataclass(frozen=True)
class KeySpace:
    """Key names under one prefix (several caches can share a Redis under different prefixes)."""

    prefix: str

    def tag(self, tenant: str) -> str:
        """The tenant's hash tag: hex, so it never holds the `{}` a tag cannot contain."""
        return short_hash(tenant)

    def index(self, tag: str) -> str:
        return f"{self.prefix}:idx:{{{tag}}}"

    def index_marker(self, tag: str) -> str:
        """Exists while the tenant's index does (set when it is made), on the same shard."""
        return f"{self.prefix}:ix:{{{tag}}}"

    def entry_prefix(self, tag: str) -> str:
        return f"{self.prefix}:c:{{{tag}}}:"

    def entry(self, entry_id: str) -> str:
        return self.entry_prefix(entry_id[:TAG_CHARS]) + entry_id

    def hits_prefix(self, tag: str) -> str:
        return f"{self.prefix}:h:{{{tag}}}:"

    def hits(self, entry_id: str) -> str:
        """An entry's hit count and last use, outside the index (see codec.HITS)."""
        return self.hits_prefix(entry_id[:TAG_CHARS]) + entry_id

    def exact(self, scope: ScopeKey, normalized_prompt: str) -> str:
        digest = hashlib.sha256(f"{scope.digest}\0{normalized_prompt}".encode()).hexdigest()[:32]
        return f"{self.prefix}:x:{{{self.tag(scope.tenant)}}}:{digest}"

    def lease(self, key: LeaseKey) -> str:
        """The fill lease of one (scope, prompt): on the tenant's shard, next to its exact key. Its waiters listen
        on the (sharded) pub/sub channel of the same name, which hashes to the same slot."""
        digest = hashlib.sha256(f"{key.scope_digest}\0{key.normalized_prompt}".encode()).hexdigest()[:32]
        return f"{self.prefix}:l:{{{self.tag(key.tenant)}}}:{digest}"

    def counters(self, tag: str) -> str:
        return f"{self.prefix}:stats:{{{tag}}}"

    @property
    def model(self) -> str:
        return f"{self.prefix}:model"

    @property
    def tenants(self) -> str:
        """The set of tenant tags that have an index (for usage across tenants)."""
        return f"{self.prefix}:tenants"

    def new_id(self, scope: ScopeKey) -> str:
        """An entry id that names its tenant's tag, so `get(id)` finds the key without a lookup table."""
        return self.tag(scope.tenant) + uuid.uuid4().hex

    @staticmethod
    def is_entry_id(entry_id: str) -> bool:
        return _ID.fullmatch(entry_id) is not None
