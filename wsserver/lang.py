"""Local language detection for ru/en/zh: a script count first, lingua when unsure.

Most chat text is written in one script, and for these three languages the script
is the answer: a text whose letters are almost all Cyrillic, Han or Latin is decided
by counting them (a few microseconds, on the socket hot path). Mixed or short text
goes to lingua (offline, deterministic):

The detector knows only the three languages and runs in low-accuracy mode: their
scripts differ, so the cheap models decide as well as the full ones on chat text.
Cost grows with length, so only the first 100 characters are read: about 40-60 us
for a sentence, 130 us at most (docs/translation.md). It answers only when one
language is clearly ahead, otherwise None, and the caller falls back to the
sender's locale, then the configured default. The same text always gets the same
answer.
"""

from __future__ import annotations

import re
import threading

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

LANGS = ("ru", "en", "zh")
SAMPLE_CHARS = 100
MIN_RELATIVE_DISTANCE = 0.1
_CODES = {Language.RUSSIAN: "ru", Language.ENGLISH: "en", Language.CHINESE: "zh"}
_SCRIPT_SAMPLE_CHARS = 400
_SCRIPT_DECIDES_SHARE = 0.9
_SCRIPTS = (
    ("ru", re.compile(r"[\u0400-\u052f]")),
    ("zh", re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")),
    ("en", re.compile(r"[A-Za-z]")),
)
_detector: LanguageDetector | None = None
_lock = threading.Lock()


def detector() -> LanguageDetector:
    """The shared detector, built on first use (a few tens of milliseconds)."""
    global _detector
    if _detector is None:
        with _lock:
            if _detector is None:
                _detector = (
                    LanguageDetectorBuilder.from_languages(*_CODES)
                    .with_low_accuracy_mode()
                    .with_minimum_relative_distance(MIN_RELATIVE_DISTANCE)
                    .build()
                )
    return _detector


def by_script(text: str) -> str | None:
    """The language whose script holds at least 90% of the letters, if any."""
    sample = text[:_SCRIPT_SAMPLE_CHARS]
    counts = [(lang, len(pattern.findall(sample))) for lang, pattern in _SCRIPTS]
    total = sum(n for _, n in counts)
    if total < 2:
        return None
    lang, best = max(counts, key=lambda c: c[1])
    return lang if best >= _SCRIPT_DECIDES_SHARE * total else None


def detect(text: str | None) -> str | None:
    if not text:
        return None
    quick = by_script(text)
    if quick is not None:
        return quick
    found = detector().detect_language_of(text[:SAMPLE_CHARS])
    return None if found is None else _CODES.get(found)
