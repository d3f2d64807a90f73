"""Authentication, the exact-path key, TTL policy and threshold validation."""

from __future__ import annotations

import pytest

from cachesvc.core.normalize import normalize_prompt
from cachesvc.core.policy import TTLKind, TTLPolicy, checked_similarity
from cachesvc.errors import InvalidRequest, Unauthorized
from cachesvc.records import ScopeKey
from cachesvc.server.auth import DEFAULT_TENANT, Authenticator, key_hash


def test_without_keys_everyone_is_the_default_tenant() -> None:
    assert Authenticator(api_keys={}).tenant_for([]) == DEFAULT_TENANT


@pytest.mark.parametrize(
    "metadata", [[("authorization", "Bearer k1")], [("authorization", "bearer k1")], [("x-api-key", "k1")]]
)
def test_key_resolves_to_its_tenant(metadata: list[tuple[str, str]]) -> None:
    assert Authenticator(api_keys={"k1": "acme", "k2": "globex"}).tenant_for(metadata) == "acme"


@pytest.mark.parametrize("metadata", [[], [("authorization", "Basic k1")], [("x-api-key", "nope")]])
def test_missing_or_unknown_key_is_unauthorized(metadata: list[tuple[str, str]]) -> None:
    with pytest.raises(Unauthorized):
        Authenticator(api_keys={"k1": "acme"}).tenant_for(metadata)


@pytest.mark.parametrize("metadata", [
    [("authorization", "Bearer k1"), ("x-api-key", "k2")],  # two different keys: neither may win
    [("x-api-key", "k2"), ("authorization", "Bearer k1")],
    [("x-api-key", "k1"), ("x-api-key", "k1")],  # repeated, even when equal
    [("authorization", "Bearer k1"), ("authorization", "Bearer k1")],
])
def test_more_than_one_credential_is_unauthorized(metadata: list[tuple[str, str]]) -> None:
    with pytest.raises(Unauthorized, match="more than one credential"):
        Authenticator(api_keys={"k1": "acme", "k2": "globex"}).tenant_for(metadata)


def test_keys_can_be_given_as_hashes_only() -> None:
    auth = Authenticator(key_hashes={key_hash("secret-key").upper(): "acme"})
    assert auth.tenant_for([("x-api-key", "secret-key")]) == "acme"
    with pytest.raises(Unauthorized):
        auth.tenant_for([("x-api-key", key_hash("secret-key"))])  # the hash itself is not a key


def test_normalisation_keeps_case_and_folds_whitespace_and_unicode_forms() -> None:
    assert normalize_prompt("  Hello\n\t  World  ") == "Hello World"
    assert normalize_prompt("Cafe\u0301") == normalize_prompt("Caf\u00e9")
    assert normalize_prompt("Hello") != normalize_prompt("hello")


def test_scope_digest_separates_fields() -> None:
    a = ScopeKey(tenant="t", namespace="ab", model="c")
    b = ScopeKey(tenant="t", namespace="a", model="bc")
    assert a.digest != b.digest
    assert a.digest == ScopeKey(tenant="t", namespace="ab", model="c").digest
    assert ScopeKey(tenant="x", namespace="ab", model="c").digest != a.digest


def test_ttl_policy_unset_is_not_zero() -> None:
    never, default = TTLPolicy.never(), TTLPolicy.default()
    assert TTLPolicy.of(0) == never
    assert default.expires_at(now=100.0, default=TTLPolicy.of(5)) == 105.0
    assert never.expires_at(now=100.0, default=TTLPolicy.of(5)) is None
    assert TTLPolicy.of(30).expires_at(now=100.0, default=never) == 130.0
    assert TTLPolicy.of(2.5).kind is TTLKind.SECONDS
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidRequest, match="ttl_seconds"):
            TTLPolicy.of(bad)


def test_threshold_is_a_similarity_in_unit_interval() -> None:
    assert checked_similarity(0.0) == 0.0 and checked_similarity(1.0) == 1.0
    for bad in (-0.01, 1.01, float("nan")):
        with pytest.raises(InvalidRequest, match="min_similarity"):
            checked_similarity(bad)
