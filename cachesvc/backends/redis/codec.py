"""An entry as the fields of one Redis hash, and back. The one place that knows an entry's stored shape: a field
added to `records.Entry` is added here (and only here)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import msgpack
import numpy as np

from cachesvc.backends.redis.keys import short_hash
from cachesvc.embedding.protocol import Vector
from cachesvc.records import Entry, EntryFeedback, FeedbackReport, ScopeKey, TokenUsage

# No expiry is stored as this expiry time in the index, so one numeric range filter serves every entry.
NEVER = 1e18

# Hash fields the index reads (see schema in backend.py).
VECTOR = "v"
SCOPE = "scope"
NAMESPACE_TAG = "nsh"
MODEL_TAG = "mh"
CONTEXT_TAG = "ch"
EXPIRES = "xa"
# Mutable statistics, kept in a hash of their own (keys.hits): changing a field of an indexed hash makes the
# query engine index the whole document again (vector included), ~1 ms of Redis CPU per hit.
HITS = "hits"
LAST_USED = "lu"
# The exact key that points at this entry, removed with it.
EXACT_KEY = "xk"
# What producing the completion cost (JSON; absent when the store carried no usage).
USAGE = "usage"
# Callers' reports on the entry's hits (`EntryFeedback`; empty until the first): msgpack of
# [[[prompt, similarity, correct], ...], [wrong prompt, ...], wrong, right, lsn], the shape the feedback script
# (backend._ADD_FEEDBACK) reads and writes with Redis' cmsgpack. msgpack rather than JSON: Redis' cjson writes
# numbers with 14 digits, cmsgpack keeps a similarity's every bit. Not in the index's schema, but rewriting it
# makes the query engine index the entry again (see HITS): fine at the rate callers report.
FEEDBACK = "fb"
# Everything an entry is made of except its vector (what reading an entry needs).
CONTENT = ("id", "tenant", "namespace", "model", "context", "prompt", "normalized_prompt", "completion",
           "metadata", "created_at", "expires_at", "size_bytes")
# What a search or scan returns of an entry: its content and the optional fields. Core reads the feedback of
# every candidate, so it comes with the search.
RETURNED = (*CONTENT, USAGE, FEEDBACK)


def encode(entry: Entry, vector: Vector, *, exact_key: str) -> dict[str, str | bytes | float | int]:
    """The hash of one entry: its content, its vector and the tags the index filters on."""
    scope = entry.scope
    return {
        "id": entry.id,
        "tenant": scope.tenant,
        "namespace": scope.namespace,
        "model": scope.model,
        "context": scope.context,
        "prompt": entry.prompt,
        "normalized_prompt": entry.normalized_prompt,
        "completion": entry.completion,
        "metadata": json.dumps(entry.metadata, ensure_ascii=False, separators=(",", ":")),
        "created_at": repr(entry.created_at),
        "expires_at": "" if entry.expires_at is None else repr(entry.expires_at),
        "size_bytes": entry.size_bytes,
        VECTOR: np.ascontiguousarray(vector, dtype=np.float32).tobytes(),
        SCOPE: scope.digest,
        # Hashed, so any text is a valid TAG value without escaping.
        NAMESPACE_TAG: short_hash(scope.namespace),
        MODEL_TAG: short_hash(scope.model),
        CONTEXT_TAG: short_hash(scope.context),
        EXPIRES: NEVER if entry.expires_at is None else entry.expires_at,
        EXACT_KEY: exact_key,
        USAGE: "" if entry.usage is None else json.dumps(
            [entry.usage.prompt_tokens, entry.usage.completion_tokens, entry.usage.cost_usd]),
        FEEDBACK: encode_feedback(entry.feedback),
    }


def encode_hits(entry: Entry) -> dict[str, str | int]:
    """The statistics hash of one entry."""
    return {HITS: entry.hit_count, LAST_USED: repr(entry.last_used_at)}


def decode(fields: Mapping[bytes, bytes]) -> Entry | None:
    """The entry of a hash (as read with HGETALL or FT.SEARCH), with its statistics' fields when they were read
    too (else none yet); None when it is not a whole entry (a key evicted or expired while being read)."""
    f = {k.decode(): v for k, v in fields.items() if k != VECTOR.encode()}
    if any(name not in f for name in CONTENT):
        return None
    text = {name: f[name].decode() for name in CONTENT}
    return Entry(
        id=text["id"],
        scope=ScopeKey(tenant=text["tenant"], namespace=text["namespace"], model=text["model"],
                       context=text["context"]),
        prompt=text["prompt"],
        normalized_prompt=text["normalized_prompt"],
        completion=text["completion"],
        metadata=json.loads(text["metadata"]),
        created_at=float(text["created_at"]),
        expires_at=float(text["expires_at"]) if text["expires_at"] else None,
        size_bytes=int(text["size_bytes"]),
        hit_count=int(f[HITS]) if HITS in f else 0,
        last_used_at=float(f[LAST_USED]) if LAST_USED in f else float(text["created_at"]),
        usage=_decode_usage(f.get(USAGE, b"")),
        feedback=decode_feedback(f.get(FEEDBACK, b"")),
    )


def _decode_usage(raw: bytes) -> TokenUsage | None:
    if not raw:
        return None
    prompt_tokens, completion_tokens, cost_usd = json.loads(raw)
    return TokenUsage(prompt_tokens=int(prompt_tokens), completion_tokens=int(completion_tokens),
                      cost_usd=None if cost_usd is None else float(cost_usd))


def encode_feedback(feedback: EntryFeedback | None) -> bytes:
    """The stored form of an entry's feedback (empty for none)."""
    if feedback is None:
        return b""
    reports = [[r.prompt, r.similarity, r.correct] for r in feedback.reports]
    return bytes(msgpack.packb([reports, sorted(feedback.wrong_prompts), feedback.wrong, feedback.right,
                                feedback.lsn]))


def decode_feedback(raw: bytes) -> EntryFeedback | None:
    """An entry's feedback from its stored form, as written by `encode_feedback` or the feedback script."""
    if not raw:
        return None
    reports, wrong_prompts, wrong, right, lsn = msgpack.unpackb(raw)
    # cmsgpack packs a whole-valued number as an integer (a similarity of 1.0 comes back as 1): float() restores it.
    return EntryFeedback(
        reports=tuple(FeedbackReport(prompt=prompt, similarity=float(similarity), correct=bool(correct))
                      for prompt, similarity, correct in reports),
        wrong_prompts=frozenset(wrong_prompts), wrong=int(wrong), right=int(right), lsn=int(lsn))


def decode_vector(raw: bytes) -> Vector:
    return np.frombuffer(raw, dtype=np.float32).copy()


def pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A RESP2 flat field/value list as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
