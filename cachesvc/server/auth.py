"""Caller -> tenant. Tenancy is decided here, from credentials, never from the request body."""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence

from cachesvc.errors import Unauthorized

DEFAULT_TENANT = "default"


class Authenticator:
    """With no keys configured every caller is the one default tenant; otherwise a key is required, sent as
    `authorization: Bearer <key>` or `x-api-key: <key>` metadata."""

    def __init__(self, *, api_keys: Mapping[str, str]) -> None:
        self._keys = dict(api_keys)  # key -> tenant

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant_for(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """Raises:
            Unauthorized: keys are configured and the caller presented none or an unknown one.
        """
        if not self._keys:
            return DEFAULT_TENANT
        presented = None
        for name, value in metadata or ():
            text = value.decode() if isinstance(value, bytes) else value
            if name == "authorization" and text.lower().startswith("bearer "):
                presented = text[7:].strip()
            elif name == "x-api-key":
                presented = text.strip()
        if not presented:
            raise Unauthorized("an API key is required (metadata 'authorization: Bearer <key>')")
        for key, tenant in self._keys.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                return tenant
        raise Unauthorized("unknown API key")
