"""Client-side argument checks, so obviously bad calls fail with ValueError before anything is sent."""

from __future__ import annotations

import math


def check_min_similarity(value: float) -> float:
    """Returns `value` if it is a similarity threshold in [0, 1] (0 is valid: serve the nearest live entry).

    Raises:
        ValueError: Outside [0, 1], or NaN.
    """
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_similarity must lie in [0, 1], got {value!r}")
    return value


def check_ttl_seconds(value: int) -> int:
    """Returns `value` if it is a valid TTL in whole seconds (0 means the entry never expires).

    Raises:
        TypeError: Not an int.
        ValueError: Negative.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ttl_seconds must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"ttl_seconds must be >= 0 (0 = never expires), got {value}")
    return value


def check_timeout(value: float | None) -> float | None:
    """Returns `value` if it is a usable deadline in seconds; None means no deadline.

    Raises:
        ValueError: Not a positive finite number.
    """
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {value!r}")
    return value
