"""Local language detection for ru/en/zh by script, deterministic and offline.

Counts letters per script in the first characters of a text; the answer is given
only when one script clearly dominates, otherwise None (the caller then falls back
to the sender's locale, then the configured default). The same text always gets
the same answer.
"""

from __future__ import annotations

import re

LANGS = ("ru", "en", "zh")
_SAMPLE_CHARS = 2000
_CONFIDENT_SHARE = 0.6
_CYRILLIC = re.compile(r"[\u0400-\u04ff\u0500-\u052f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


def detect(text: str | None) -> str | None:
    if not text:
        return None
    sample = text[:_SAMPLE_CHARS]
    counts = {
        "ru": len(_CYRILLIC.findall(sample)),
        "zh": len(_HAN.findall(sample)),
        "en": len(_LATIN.findall(sample)),
    }
    total = sum(counts.values())
    if total == 0:
        return None
    lang, best = max(counts.items(), key=lambda kv: kv[1])
    if best / total < _CONFIDENT_SHARE:
        return None
    return lang
