"""Writes clients/openai_scope_vectors.json: `chat.completions.create` requests and what the Python wrapper's
mapping (`cachesvc_client.openai.plan_request`) makes of them: cacheable or not, and the prompt, model and scope
context.

The TypeScript wrapper's `cacheableRequest` must give the same (its test reads this file), and a Python test checks
that this script still writes the committed file. A vector's `request` is the body as a TypeScript caller passes
it; `python_request`, when present, is the same call as Python keyword arguments (where the SDKs differ: Python
passes unknown body fields in `extra_body`, and request options beside the body).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cachesvc_client.openai import CachePlan, plan_request

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "clients/openai_scope_vectors.json"
NAMESPACE = "ns"

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
DEVELOPER = {"role": "developer", "content": [{"type": "text", "text": "Answer in one sentence."}]}
Q = {"role": "user", "content": "What is the capital of France?"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather by city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL_ARGS = '{"city":"Paris"}'
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}


def ask(*messages: dict[str, Any], model: str = "gpt-4o-mini", **params: Any) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), **params}


# (name, request, python_request or None)
CASES: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = [
    ("user message only", ask(Q), None),
    ("system prompt", ask(SYSTEM, Q), None),
    ("system and developer prompts", ask(SYSTEM, DEVELOPER, Q), None),
    ("multi-turn prefix", ask(SYSTEM, {"role": "user", "content": "Hi"},
                              {"role": "assistant", "content": "Hello! How can I help?"}, Q), None),
    ("text parts joined with newlines", ask(SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "Translate:"}, {"type": "text", "text": "bonjour"}]}), None),
    ("sampling parameters", ask(SYSTEM, Q, temperature=0.1, top_p=1e-07, max_tokens=256, seed=7), None),
    ("integral float temperature", ask(SYSTEM, Q, temperature=1.0, max_completion_tokens=1000), None),
    ("tools and tool_choice", ask(SYSTEM, Q, tools=TOOLS, tool_choice="auto", parallel_tool_calls=False), None),
    ("response_format and stop", ask(SYSTEM, Q, response_format={"type": "json_object"}, stop=["\n\n", "END"]),
     None),
    ("penalties and logit_bias", ask(SYSTEM, Q, frequency_penalty=0.5, presence_penalty=-0.25,
                                     logit_bias={"50256": -100, "1234": 2.5}), None),
    ("reasoning_effort", ask(Q, model="o4-mini", reasoning_effort="low"), None),
    ("excluded parameters", ask(SYSTEM, Q, temperature=0, stream=True, stream_options={"include_usage": True},
                                user="u-1", metadata={"team": "a"}, store=True, service_tier="auto",
                                safety_identifier="s", prompt_cache_key="k", prompt_cache_retention="24h"),
     None),
    ("null parameters are omitted", ask(SYSTEM, Q, temperature=0, top_p=None, seed=None, stop=None), None),
    ("request options are not parameters", ask(SYSTEM, Q, temperature=0),
     ask(SYSTEM, Q, temperature=0, timeout=30, extra_headers={"x-trace": "1"}, extra_query={"debug": "1"})),
    ("unknown body fields (Python: extra_body)", ask(SYSTEM, Q, temperature=0, top_k=40, repetition_penalty=1.1),
     ask(SYSTEM, Q, temperature=0, extra_body={"top_k": 40, "repetition_penalty": 1.1})),
    ("n = 1 counts as a parameter", ask(SYSTEM, Q, n=1), None),
    ("null-valued message keys are dropped", ask(
        SYSTEM, {"role": "user", "content": "Weather in Paris?", "name": None},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGS}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "user", "content": "And tomorrow?"}, tools=TOOLS), None),
    ("the same without the null keys", ask(
        SYSTEM, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGS}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "user", "content": "And tomorrow?"}, tools=TOOLS), None),
    ("unicode", ask({"role": "system", "content": "Réponds en français 🇫🇷 — \u2018guillemets\u2019"},
                    {"role": "user", "content": "日本の首都は\uff1f e\u0301"}, stop=["\u2028"]), None),
    ("empty user text", ask(SYSTEM, {"role": "user", "content": ""}), None),
    ("image in the last message (uncacheable)", ask(SYSTEM, {"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, IMAGE]}), None),
    ("image earlier in the conversation (uncacheable)", ask(
        {"role": "user", "content": [IMAGE]}, {"role": "assistant", "content": "A cat."}, Q), None),
    ("audio part (uncacheable)", ask({"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]}), None),
    ("n = 2 (uncacheable)", ask(SYSTEM, Q, n=2), None),
    ("last message from the assistant (uncacheable)", ask(SYSTEM, Q, {"role": "assistant", "content": "Paris."}),
     None),
    ("last message from a tool (uncacheable)", ask(
        Q, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                  "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "42"}), None),
    ("no messages (uncacheable)", ask(), None),
]


def expected(request: dict[str, Any]) -> dict[str, Any]:
    plan = plan_request(request, namespace=NAMESPACE)
    if not isinstance(plan, CachePlan):
        return {"cacheable": False}
    assert plan.scope.namespace == NAMESPACE
    return {"cacheable": True, "prompt": plan.prompt, "model": plan.scope.model, "context": plan.scope.context}


def render() -> str:
    vectors = []
    for name, request, python_request in CASES:
        vector: dict[str, Any] = {"name": name, "request": request}
        if python_request is not None:
            vector["python_request"] = python_request
        vector["expected"] = expected(python_request if python_request is not None else request)
        vectors.append(vector)
    return json.dumps({"namespace": NAMESPACE, "vectors": vectors}, ensure_ascii=False, indent=1) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=OUT)
    parser.parse_args().out.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
