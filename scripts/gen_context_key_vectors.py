"""Writes clients/context_key_vectors.json: `context_key` inputs and the keys the Python client gives for them.

The TypeScript client's `contextKey` must give the same keys (its test reads this file), and a Python test checks
that this script still writes the committed file. Integers past 2**53 are written as {"$int": "<digits>"}, since
a JSON number that large does not survive a JavaScript parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cachesvc_client import context_key

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "clients/context_key_vectors.json"
_SAFE = 2**53

SYSTEM = "You are a helpful assistant."
CASES: list[tuple[str, dict[str, Any]]] = [
    ("nothing", {}),
    ("empty values count as absent", {"system_prompt": "", "params": {}, "messages": []}),
    ("system prompt only", {"system_prompt": SYSTEM}),
    ("params only", {"params": {"temperature": 0.7, "max_tokens": 256}}),
    ("integral float is an int", {"params": {"temperature": 1.0, "top_p": 1}}),
    ("negative zero", {"params": {"x": -0.0}}),
    ("bool is not a number", {"params": {"flag": True, "other": False, "one": 1}}),
    ("null value", {"params": {"stop": None}}),
    ("float repr forms", {"params": {"a": 0.1, "b": 1e-07, "c": 1.5e-05, "d": 0.0001, "e": 123.456,
                                     "f": 0.1 + 0.2, "g": -2.5, "h": 5e-324, "i": 1000000000000000.1,
                                     "j": 123456789012345.67, "k": 1e-5, "l": 0.00012}}),
    ("integral floats of any size", {"params": {"a": 1e22, "b": 1e16, "c": 2.0**60, "d": 1.7976931348623157e308,
                                                "e": -1e300}}),
    ("big ints", {"params": {"a": 2**64, "b": -(2**63), "c": 2**53 - 1}}),
    ("key order by code point", {"params": {"\ue000": 1, "\U0001f600": 2, "b": 3, "B": 4, "\u00e9": 5, "": 6,
                                             "a\u0000": 7, "aa": 8, "a": 9}}),
    ("non-ascii text kept as is", {"system_prompt": "Réponds en français 🇫🇷 — \u2018quotes\u2019 日本語",
                                   "params": {"stop": ["\u2028", "\u2029", "\x7f"]}}),
    ("escapes", {"system_prompt": 'line\nbreak\ttab "quoted" back\\slash \x00\x01\x1f \b\f\r /slash'}),
    ("no unicode normalisation", {"system_prompt": "e\u0301", "params": {"nfc": "\u00e9"}}),
    ("nested structures", {"params": {"tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather by city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "auto", "response_format": {"type": "json_object"}, "logit_bias": {"50256": -100}}}),
    ("messages", {"messages": [{"role": "system", "content": SYSTEM},
                               {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello! How can I help?"}]}),
    ("message order matters", {"messages": [{"role": "assistant", "content": "Hello! How can I help?"},
                                            {"role": "user", "content": "Hi"},
                                            {"role": "system", "content": SYSTEM}]}),
    ("text parts and tool calls", {"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}]}),
    ("everything", {"system_prompt": SYSTEM, "params": {"temperature": 0, "seed": 7, "stop": ["\n\n"]},
                    "messages": [{"role": "user", "content": "Earlier question"}]}),
    ("empty containers inside", {"params": {"a": [], "b": {}, "c": [[]], "d": ""}}),
]


def _encode(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        return value if -_SAFE < value < _SAFE else {"$int": str(value)}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    raise TypeError(type(value).__name__)


def decode(value: Any) -> Any:
    """Undoes `_encode` on a value read back from the file (the tests use it)."""
    if isinstance(value, dict):
        if set(value) == {"$int"}:
            return int(value["$int"])
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


def render() -> str:
    vectors = [{"name": name, "input": _encode(inputs), "key": context_key(**inputs)} for name, inputs in CASES]
    return json.dumps({"canonical_version": 1, "vectors": vectors}, ensure_ascii=False, indent=1) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=OUT)
    parser.parse_args().out.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
