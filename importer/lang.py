"""Script-based language guess for imported bodies: Cyrillic, CJK or Latin.

Local and deterministic; no model. The script with the most letters wins; a body
with no letters at all (emoji, digits, punctuation) gets the configured default.
Only the first SAMPLE characters are looked at, so a 32 KiB body costs no more
than a short one.
"""

from __future__ import annotations

import re

_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_CYRILLIC = re.compile(r"[\u0400-\u052f]")
_CJK = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f\u3040-\u30ff]"
)
_ASCII_LETTER = re.compile(r"[A-Za-z]")
SAMPLE = 512


def detect(text: str, default: str = "ru") -> str:
    """Return 'ru', 'zh' or 'en' for `text`; `default` when it has no letters."""
    if len(text) > SAMPLE:
        text = text[:SAMPLE]
    if text.isascii():
        return "en" if _ASCII_LETTER.search(text) else default
    cyr = _CYRILLIC.subn("", text)[1]
    cjk = _CJK.subn("", text)[1]
    lat = _LATIN.subn("", text)[1]
    best = max(cyr, cjk, lat)
    if best == 0:
        return default
    if cyr == best:
        return "ru"
    if cjk == best:
        return "zh"
    return "en"
