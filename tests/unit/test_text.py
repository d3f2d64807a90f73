"""checked_text: what may reach the tokenizer."""

from __future__ import annotations

import pytest

from cachesvc.embedding.text import DEFAULT_MAX_TEXT_BYTES, checked_text
from cachesvc.errors import InvalidRequest


@pytest.mark.parametrize(
    "text",
    ["hello", "  padded on both sides  ", "a\x00b", "tab\tand\nnewline", "日本語のテキスト", "🙂", "?!", "x"],
)
def test_ordinary_text_passes_unchanged(text: str) -> None:
    assert checked_text(text) == text


@pytest.mark.parametrize("text", ["", " ", "\t\n\r ", "\u3000", "\u00a0\u2003", "\x0b\x0c"])
def test_empty_or_whitespace_only_is_rejected(text: str) -> None:
    with pytest.raises(InvalidRequest, match="empty or whitespace") as info:
        checked_text(text)
    assert info.value.field == "text"


def test_the_error_names_the_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        checked_text("   ", field="prompt")
    assert info.value.field == "prompt"
    assert str(info.value).startswith("prompt: ")


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    assert DEFAULT_MAX_TEXT_BYTES == 32 * 1024
    at_limit = "é" * (DEFAULT_MAX_TEXT_BYTES // 2)  # 2 bytes each
    assert checked_text(at_limit) == at_limit
    with pytest.raises(InvalidRequest, match=f"{DEFAULT_MAX_TEXT_BYTES + 2} bytes of UTF-8; the limit is"):
        checked_text(at_limit + "é")
    with pytest.raises(InvalidRequest):
        checked_text("x" * (DEFAULT_MAX_TEXT_BYTES + 1))


def test_a_custom_limit_applies() -> None:
    assert checked_text("🙂", max_bytes=4) == "🙂"
    with pytest.raises(InvalidRequest, match="is 5 bytes"):
        checked_text("🙂x", max_bytes=4)


def test_lone_surrogates_are_replaced_so_the_tokenizer_can_take_them() -> None:
    out = checked_text("caf\udcff latte \ud800")
    assert out == "caf? latte ?"
    out.encode("utf-8")  # would raise UnicodeEncodeError if a surrogate were left


def test_the_limit_is_checked_after_surrogate_replacement() -> None:
    assert checked_text("\udcff" * 10, max_bytes=10) == "?" * 10
    with pytest.raises(InvalidRequest, match="is 11 bytes"):
        checked_text("\udcff" * 11, max_bytes=10)
