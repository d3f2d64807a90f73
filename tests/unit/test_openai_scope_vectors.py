"""The shared request -> scope vectors of the OpenAI wrappers: the Python wrapper gives the committed results,
and the file is what scripts/gen_openai_scope_vectors.py writes. The TypeScript wrapper's test checks the same
file, so both languages serve each other's cached answers."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from cachesvc_client.openai import CachePlan, plan_request
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "clients/openai_scope_vectors.json"


def _script() -> ModuleType:
    return load_script(ROOT / "scripts/gen_openai_scope_vectors.py")


def _file() -> dict[str, Any]:
    content: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return content


def test_committed_vectors_are_what_the_script_writes() -> None:
    if _script().render() != VECTORS.read_text(encoding="utf-8"):
        pytest.fail(f"{VECTORS} is stale: run `.venv/bin/python scripts/gen_openai_scope_vectors.py`")


@pytest.mark.parametrize("vector", _file()["vectors"], ids=lambda vector: str(vector["name"]))
def test_the_python_wrapper_gives_the_committed_result(vector: dict[str, Any]) -> None:
    plan = plan_request(vector.get("python_request", vector["request"]), namespace=_file()["namespace"])
    expected = vector["expected"]
    if not expected["cacheable"]:
        assert not isinstance(plan, CachePlan)
        return
    assert isinstance(plan, CachePlan)
    assert (plan.prompt, plan.scope.model, plan.scope.context) == (
        expected["prompt"], expected["model"], expected["context"])
    assert plan.scope.namespace == _file()["namespace"]


def test_vectors_cover_both_outcomes_and_tell_requests_apart() -> None:
    vectors = _file()["vectors"]
    assert len(vectors) >= 20
    cacheable = [v["expected"] for v in vectors if v["expected"]["cacheable"]]
    assert 0 < len(cacheable) < len(vectors)
    results = {v["name"]: (v["expected"].get("prompt"), v["expected"].get("model"), v["expected"].get("context"))
               for v in vectors if v["expected"]["cacheable"]}
    # Null-valued message keys and parameters, excluded parameters and request options do not change the scope...
    assert results["null-valued message keys are dropped"] == results["the same without the null keys"]
    assert (results["excluded parameters"] == results["null parameters are omitted"]
            == results["request options are not parameters"])
    # ...while every other cacheable request here maps to a (prompt, scope) of its own.
    same = ("the same without the null keys", "null parameters are omitted", "request options are not parameters")
    others = [r for name, r in results.items() if name not in same]
    assert len(set(others)) == len(others)
