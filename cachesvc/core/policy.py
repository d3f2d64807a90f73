"""TTL, threshold and size policy: pure values with their validation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from cachesvc.errors import InvalidRequest


def checked_similarity(value: float, *, field: str = "min_similarity") -> float:
    """A cosine-similarity threshold: in [0, 1], higher is stricter; 0 is valid (serve the nearest entry).

    Raises:
        InvalidRequest: NaN or outside [0, 1].
    """
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidRequest(f"must be a cosine similarity in [0, 1], got {value}", field=field)
    return value


class TTLKind(Enum):
    DEFAULT = "default"
    NEVER = "never"
    SECONDS = "seconds"


@dataclass(frozen=True)
class TTLPolicy:
    """How long an entry lives. "Unset" (the server's default) is not the same as 0 (never expires)."""

    kind: TTLKind
    seconds: float = 0.0

    @classmethod
    def default(cls) -> TTLPolicy:
        return cls(TTLKind.DEFAULT)

    @classmethod
    def never(cls) -> TTLPolicy:
        return cls(TTLKind.NEVER)

    @classmethod
    def of(cls, seconds: float, *, field: str = "ttl_seconds") -> TTLPolicy:
        """A TTL from a number of seconds; 0 means never expires.

        Raises:
            InvalidRequest: negative or not finite.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidRequest(f"must be >= 0 seconds (0 = never expires), got {seconds}", field=field)
        return cls.never() if seconds == 0 else cls(TTLKind.SECONDS, float(seconds))

    def expires_at(self, *, now: float, default: TTLPolicy) -> float | None:
        policy = default if self.kind is TTLKind.DEFAULT else self
        if policy.kind is TTLKind.DEFAULT:
            raise ValueError("the default TTL policy must be concrete")
        return None if policy.kind is TTLKind.NEVER else now + policy.seconds


@dataclass(frozen=True, kw_only=True)
class SizeLimits:
    max_prompt_bytes: int = 32 * 1024
    max_completion_bytes: int = 1024 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_metadata_entries: int = 64
    max_scope_field_bytes: int = 1024

    def __post_init__(self) -> None:
        if min(self.max_prompt_bytes, self.max_completion_bytes, self.max_metadata_bytes,
               self.max_metadata_entries, self.max_scope_field_bytes) < 1:
            raise ValueError("size limits must be >= 1")


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))
