"""Untrusted strings made encodable: a lone UTF-16 surrogate (JSON `"\\ud800"`, a broken backend page) is a valid
Python `str` that UTF-8 refuses, so it breaks cache keys, SQLite writes, HTTP bodies and tokenizers far from
where it came in. It is replaced by U+FFFD where such text enters."""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_surrogates(text: str) -> str:
    """`text` with every surrogate code point replaced by U+FFFD (the replacement character)."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def replace_surrogates_in(value):
    """`replace_surrogates` applied to every string (keys included) of a JSON-like value."""
    if isinstance(value, str):
        return replace_surrogates(value)
    if isinstance(value, dict):
        return {replace_surrogates_in(k): replace_surrogates_in(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [replace_surrogates_in(v) for v in value]
    return value
