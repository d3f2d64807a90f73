"""The API keys file: which key hash belongs to which tenant, and each tenant's call rates.

A TOML file of `[[keys]]` tables, so the server never holds a key itself and nothing secret is on its command
line:

    [[keys]]
    tenant = "acme"
    sha256 = "<hex SHA-256 of the key>"     # e.g. printf %s "$KEY" | sha256sum
    lookups_per_second = 200                # optional; else --lookups-per-second
    stores_per_second = 20                  # optional; else --stores-per-second
    max_bytes = 104857600                   # optional; else --tenant-max-bytes

A tenant may have several keys (rotation); its limits may be given on any of them, but not differently twice.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cachesvc.core.limits import TenantLimits

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = {"tenant", "sha256", "lookups_per_second", "stores_per_second", "max_bytes"}


@dataclass(frozen=True, kw_only=True)
class KeyFile:
    key_hashes: dict[str, str] = field(default_factory=dict)  # sha256 hex -> tenant
    limits: dict[str, TenantLimits] = field(default_factory=dict)  # tenant -> its own limits


def _rate(raw: object, where: str, name: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise ValueError(f"{where}: {name} must be a number > 0")
    return float(raw)


def load_key_file(path: Path, *, default: TenantLimits | None = None) -> KeyFile:
    """Reads and checks a keys file.

    Args:
        default: the limits of a tenant whose keys set none (None: unlimited).

    Raises:
        ValueError: the file is unreadable or malformed (the message names the entry, never a hash).
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the keys file: {exc}") from exc
    unknown = set(data) - {"keys"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected [[keys]] tables")
    entries = data.get("keys", [])
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'keys' must be an array of tables ([[keys]])")
    default = default or TenantLimits()
    hashes: dict[str, str] = {}
    given: dict[str, TenantLimits] = {}
    for n, entry in enumerate(entries, start=1):
        where = f"{path}: key #{n}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a table")
        extra = set(entry) - _FIELDS
        if extra:
            raise ValueError(f"{where}: unknown field(s) {sorted(extra)}")
        tenant, digest = entry.get("tenant"), entry.get("sha256")
        if not isinstance(tenant, str) or not tenant.strip():
            raise ValueError(f"{where}: tenant must be a non-empty string")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ValueError(f"{where}: sha256 must be 64 hex digits (the SHA-256 of the key)")
        if digest.lower() in hashes:
            raise ValueError(f"{where}: the same key hash is listed twice")
        hashes[digest.lower()] = tenant
        if {"lookups_per_second", "stores_per_second", "max_bytes"} & set(entry):
            # A limit not given on the key is the default's.
            max_bytes = entry.get("max_bytes", default.max_bytes)
            if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                          or max_bytes < 1):
                raise ValueError(f"{where}: max_bytes must be a whole number >= 1")
            own = TenantLimits(
                lookups_per_second=(_rate(entry["lookups_per_second"], where, "lookups_per_second")
                                    if "lookups_per_second" in entry else default.lookups_per_second),
                stores_per_second=(_rate(entry["stores_per_second"], where, "stores_per_second")
                                   if "stores_per_second" in entry else default.stores_per_second),
                max_bytes=max_bytes)
            if given.setdefault(tenant, own) != own:
                raise ValueError(f"{where}: tenant {tenant!r} is given different limits on two keys")
    return KeyFile(key_hashes=hashes, limits={tenant: given.get(tenant, default) for tenant in set(hashes.values())})
