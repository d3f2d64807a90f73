"""The shared `context_key` vectors: the Python client gives the committed keys, and the file is what
scripts/gen_context_key_vectors.py writes. The TypeScript client's test checks the same file, so both
languages hash the same inputs to the same scope context."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cachesvc_client import context_key
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "clients/context_key_vectors.json"


def _script() -> ModuleType:
    return load_script(ROOT / "scripts/gen_context_key_vectors.py")


def _vectors() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]
    return vectors


def test_committed_vectors_are_what_the_script_writes() -> None:
    if _script().render() != VECTORS.read_text(encoding="utf-8"):
        pytest.fail(f"{VECTORS} is stale: run `.venv/bin/python scripts/gen_context_key_vectors.py`")


@pytest.mark.parametrize("vector", _vectors(), ids=lambda vector: str(vector["name"]))
def test_context_key_gives_the_committed_key(vector: dict[str, Any]) -> None:
    inputs = _script().decode(vector["input"])
    assert context_key(**inputs) == vector["key"]


def test_vectors_tell_cases_apart() -> None:
    keys = [vector["key"] for vector in _vectors()]
    # Only "nothing" and "empty values count as absent" share a key.
    assert len(set(keys)) == len(keys) - 1
