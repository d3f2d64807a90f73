"""Caller -> tenant. Tenancy is decided here, from credentials, never from the request body."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from cachesvc.errors import Unauthorized

DEFAULT_TENANT = "default"
CREDENTIAL_HEADERS = ("authorization", "x-api-key")


def key_hash(key: str) -> str:
    """How a key is recorded in a keys file: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    """With no keys configured every caller is the one default tenant; otherwise exactly one key is required,
    sent as `authorization: Bearer <key>` or `x-api-key: <key>` metadata."""

    def __init__(self, *, api_keys: Mapping[str, str] | None = None,
                 key_hashes: Mapping[str, str] | None = None) -> None:
        """Args:
            api_keys: key -> tenant, in the clear.
            key_hashes: hex SHA-256 of a key -> tenant (a keys file); the server never needs the keys themselves.
        """
        self._static = {key_hash(key): tenant for key, tenant in (api_keys or {}).items()}
        self._hashes: dict[str, str] = {}
        self.replace_key_hashes(key_hashes or {})

    def replace_key_hashes(self, key_hashes: Mapping[str, str]) -> None:
        """Replaces the hashed keys (a reloaded keys file); keys given in the clear stay."""
        self._hashes = {**self._static, **{digest.lower(): tenant for digest, tenant in key_hashes.items()}}

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def tenant_for(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """Raises:
            Unauthorized: keys are configured and the caller presented none, an unknown one, or more than one.
        """
        if not self._hashes:
            return DEFAULT_TENANT
        presented = [(name, value.decode(errors="replace") if isinstance(value, bytes) else value)
                     for name, value in metadata or () if name in CREDENTIAL_HEADERS]
        if len(presented) > 1:
            # One rule for ambiguity: when a proxy and an application each add a key, neither may win.
            raise Unauthorized("more than one credential: send one 'authorization' or one 'x-api-key' header")
        if not presented:
            raise Unauthorized("an API key is required (metadata 'authorization: Bearer <key>')")
        name, value = presented[0]
        key = value
        if name == "authorization":
            scheme, _, key = value.strip().partition(" ")
            if scheme.lower() != "bearer":
                raise Unauthorized("the authorization header must be 'Bearer <key>'")
        key = key.strip()
        if not key:
            raise Unauthorized("an API key is required (metadata 'authorization: Bearer <key>')")
        digest = key_hash(key)
        tenant = None
        for known, owner in self._hashes.items():  # every entry compared, in constant time each
            if hmac.compare_digest(known, digest):
                tenant = owner
        if tenant is None:
            raise Unauthorized("unknown API key")
        return tenant
