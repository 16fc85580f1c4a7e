"""Script-based language guess for imported bodies: Cyrillic, CJK or Latin.

Local and deterministic; no model. The script with the most letters wins; a body
with no letters at all (emoji, digits, punctuation) gets the configured default.
Only the first SAMPLE characters are looked at, so a 32 KiB body costs no more
than a short one.

The letters counted (code points):
- Cyrillic: U+0400-U+052F;
- CJK: U+3040-U+30FF (kana), U+3400-U+4DBF, U+4E00-U+9FFF, U+F900-U+FAFF,
  U+20000-U+2FA1F;
- Latin: A-Z, a-z, U+00C0-U+024F.

They are counted on the UTF-8 bytes of the sample, by lead byte: one translate
maps each byte to its class and three counts read the classes off (a handful of C
calls instead of three regex passes over the characters, a quarter of the cost). A
lead byte whose block lies wholly inside one script counts for it; the few whose
block straddles a range's edge (U+0500, U+0240, U+3000, U+4DC0, U+F900, U+2FA1F)
are looked at with their next bytes, and only when present.
"""

from __future__ import annotations

import re

SAMPLE = 512

_ASCII_LETTER = re.compile(r"[A-Za-z]")


def _classes() -> bytes:
    table = bytearray(b"." * 256)
    for b in (*range(0x41, 0x5B), *range(0x61, 0x7B), *range(0xC3, 0xC9)):
        table[b] = ord("L")  # A-Z, a-z; U+00C0-U+023F
    for b in range(0xD0, 0xD4):
        table[b] = ord("C")  # U+0400-U+04FF
    for b in range(0xE4, 0xEA):
        table[b] = ord("J")  # U+4000-U+9FFF (U+4DC0-U+4DFF taken off below)
    for b in (0xC9, 0xD4, 0xE3, 0xEF, 0xF0):
        table[b] = ord("E")  # blocks across an edge
    return bytes(table)


_CLASSES = _classes()
# The sequences that count, among those whose lead byte straddles a range's edge, in
# one pattern (one pass over the bytes); the lead byte says which script a match is.
_EDGES = re.compile(
    rb"\xc9[\x80-\x8f]"  # U+0240-U+024F of U+0240-U+027F: Latin
    rb"|\xd4[\x80-\xaf]"  # U+0500-U+052F of U+0500-U+053F: Cyrillic
    rb"|\xe3[\x81-\x83\x90-\xbf]"  # U+3040-U+30FF, U+3400-: CJK
    rb"|\xef[\xa4-\xab]"  # U+F900-U+FAFF: CJK
    rb"|\xf0(?:[\xa0-\xae]|\xaf[\x80-\xa7]|\xaf\xa8[\x80-\x9f])")  # U+2xxxx: CJK
_NOT_CJK_E4 = b"\xe4\xb7"  # U+4DC0-U+4DFF, Yijing hexagrams


def detect(text: str, default: str = "ru") -> str:
    """Return 'ru', 'zh' or 'en' for `text`; `default` when it has no letters."""
    if len(text) > SAMPLE:
        text = text[:SAMPLE]
    if text.isascii():
        return "en" if _ASCII_LETTER.search(text) else default
    b = text.encode("utf-8", "surrogatepass")
    t = b.translate(_CLASSES)
    cyr, cjk, lat = t.count(b"C"), t.count(b"J"), t.count(b"L")
    if _NOT_CJK_E4 in b:
        cjk -= b.count(_NOT_CJK_E4)
    if b"E" in t:
        for m in _EDGES.findall(b):
            lead = m[0]
            if lead == 0xD4:
                cyr += 1
            elif lead == 0xC9:
                lat += 1
            else:
                cjk += 1
    # the most letters wins; on a tie Cyrillic, then CJK
    if cyr >= cjk and cyr >= lat:
        return "ru" if cyr else default
    if cjk >= lat:
        return "zh"
    return "en"
