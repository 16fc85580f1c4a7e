"""Local language detection for ru/en/zh with lingua (offline, deterministic).

The detector knows only the three languages and runs in low-accuracy mode: their
scripts differ, so the cheap models decide as well as the full ones on chat text.
Cost grows with length, so only the first 100 characters are read: about 40-60 us
for a sentence, 130 us at most (docs/translation.md). It answers only when one
language is clearly ahead, otherwise None, and the caller falls back to the
sender's locale, then the configured default. The same text always gets the same
answer.
"""

from __future__ import annotations

import threading

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

LANGS = ("ru", "en", "zh")
SAMPLE_CHARS = 100
MIN_RELATIVE_DISTANCE = 0.1
_CODES = {Language.RUSSIAN: "ru", Language.ENGLISH: "en", Language.CHINESE: "zh"}
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


def detect(text: str | None) -> str | None:
    if not text:
        return None
    found = detector().detect_language_of(text[:SAMPLE_CHARS])
    return None if found is None else _CODES.get(found)
