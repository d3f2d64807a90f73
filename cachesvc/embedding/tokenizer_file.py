"""Writes a model directory's `tokenizer.json` with no fixed padding or truncation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cachesvc.errors import ModelError


def write_tokenizer(source: Path | dict[str, Any], target: Path) -> None:
    """Copies a fast tokenizer's JSON (a file, or its parsed content) to `target` without padding and truncation.

    The upstream file pads every text to 128 tokens and truncates at 128 (the tokenizer trap): the embedder sets
    both itself, and shipping neither protects any other reader of this file.

    Raises:
        ModelError: `source` is a file that cannot be read as JSON.
    """
    if isinstance(source, Path):
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{source}: unreadable tokenizer: {exc}") from exc
    else:
        data = dict(source)
    data["padding"] = None
    data["truncation"] = None
    target.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
