"""Per-tenant token buckets and the API keys file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachesvc.core.limits import CallKind, RateLimiter, TenantLimits
from cachesvc.errors import RateLimited
from cachesvc.keyfile import load_key_file
from cachesvc.server.auth import key_hash


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_one_second_of_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(default=TenantLimits(lookups_per_second=2), monotonic=clock)
    limiter.check("t", CallKind.LOOKUP)
    limiter.check("t", CallKind.LOOKUP)
    with pytest.raises(RateLimited) as caught:
        limiter.check("t", CallKind.LOOKUP)
    assert caught.value.retry_after_seconds == pytest.approx(0.5)
    clock.now += 0.5
    limiter.check("t", CallKind.LOOKUP)
    limiter.check("t", CallKind.STORE)  # stores are unlimited here
    limiter.check("other", CallKind.LOOKUP)  # each tenant has its own bucket


def test_a_slow_rate_still_allows_one_call_and_says_when_the_next_fits() -> None:
    clock = Clock()
    limiter = RateLimiter(per_tenant={"t": TenantLimits(stores_per_second=0.1)}, monotonic=clock)
    limiter.check("t", CallKind.STORE)
    with pytest.raises(RateLimited) as caught:
        limiter.check("t", CallKind.STORE)
    assert caught.value.retry_after_seconds == pytest.approx(10.0)
    for _ in range(100):
        limiter.check("t", CallKind.LOOKUP)
        limiter.check("unlisted", CallKind.STORE)


def test_new_limits_apply_at_once() -> None:
    clock = Clock()
    limiter = RateLimiter(default=TenantLimits(lookups_per_second=1), monotonic=clock)
    limiter.check("t", CallKind.LOOKUP)
    limiter.set_limits(default=TenantLimits(), per_tenant={})
    for _ in range(10):
        limiter.check("t", CallKind.LOOKUP)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan")])
def test_limits_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError):
        TenantLimits(lookups_per_second=rate)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_keys_file_gives_hashes_tenants_and_limits(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
[[keys]]
tenant = "acme"
sha256 = "{key_hash('acme-1').upper()}"
lookups_per_second = 50

[[keys]]
tenant = "acme"
sha256 = "{key_hash('acme-2')}"

[[keys]]
tenant = "globex"
sha256 = "{key_hash('globex-1')}"
max_bytes = 5000
""")
    keys = load_key_file(path, default=TenantLimits(lookups_per_second=5, stores_per_second=1))
    assert keys.key_hashes == {key_hash("acme-1"): "acme", key_hash("acme-2"): "acme", key_hash("globex-1"): "globex"}
    assert keys.limits == {"acme": TenantLimits(lookups_per_second=50, stores_per_second=1),
                           "globex": TenantLimits(lookups_per_second=5, stores_per_second=1, max_bytes=5000)}


@pytest.mark.parametrize(("text", "message"), [
    ('[[keys]]\ntenant = "a"\nsha256 = "abc"\n', "64 hex digits"),
    (f'[[keys]]\nsha256 = "{"a" * 64}"\n', "tenant must be"),
    (f'[[keys]]\ntenant = "a"\nsha256 = "{"a" * 64}"\nkey = "plain"\n', "unknown field"),
    (f'[[keys]]\ntenant = "a"\nsha256 = "{"a" * 64}"\n[[keys]]\ntenant = "b"\nsha256 = "{"A" * 64}"\n',
     "listed twice"),
    (f'[[keys]]\ntenant = "a"\nsha256 = "{"a" * 64}"\nlookups_per_second = 1\n'
     f'[[keys]]\ntenant = "a"\nsha256 = "{"b" * 64}"\nlookups_per_second = 2\n', "different limits"),
    (f'[[keys]]\ntenant = "a"\nsha256 = "{"a" * 64}"\nstores_per_second = 0\n', "must be a number > 0"),
    (f'[[keys]]\ntenant = "a"\nsha256 = "{"a" * 64}"\nmax_bytes = 1.5\n', "max_bytes must be"),
    ('keys = "nope"\n', "array of tables"),
    ("not toml at all [", "cannot read"),
])
def test_a_malformed_keys_file_is_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_key_file(write(tmp_path, text))
