"""The README's settings table lists every setting, with its flag and environment variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cachesvc.config import Settings, env_name, flag_name

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [f.name for f in dataclasses.fields(Settings)
               if f"| `{flag_name(f.name)}` | `{env_name(f.name)}` |" not in text]
    assert not missing, f"README.md's settings table lacks {missing}"
