"""Search grams and query parsing: terms, the grams an index lookup needs, LIKE patterns.

A text's grams are every trigram of each whitespace-free word, plus every Han
character and pair of adjacent Han characters, of the lowercased text (the same
rule as `beseda_grams` in sql/0010_search.sql, which indexes chat and user names).
`text_grams` makes a message's grams for message_grams (wsserver/search_index.py);
`parse` makes a query's. A term of three or more characters is looked up by its
trigrams, a term of one or two Han characters by itself. Shorter terms in other
scripts cannot use the index; they only narrow what the other terms found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_QUERY_CHARS = 200
MAX_TERMS = 8
MAX_ORDER_ID = 2**63 - 1


# Han ideographs: CJK Unified, Extension A, Compatibility (as in beseda_grams).
_HAN_RUN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


# Only the first characters of a message are indexed (as beseda_grams does).
MAX_INDEXED_CHARS = 4000

# Lowercasing as PostgreSQL's pg_c_utf8 does (one character to one, no context), so
# that grams, LIKE patterns and `beseda_norm` agree: Python's str.lower() turns a
# final capital sigma into a final small sigma and U+0130 into two characters.
_FOLD = str.maketrans({"\u0130": "i", "\u03a3": "\u03c3"})


def fold(text: str) -> str:
    if "\u03a3" in text or "\u0130" in text:  # translate() is slow; these are rare
        text = text.translate(_FOLD)
    return text.lower()


def text_grams(*texts: str | None) -> str:
    """The grams of a message's texts (original and translations), distinct and
    space-separated, as message_grams stores them."""
    text = fold("\n".join(t for t in texts if t is not None)[:MAX_INDEXED_CHARS])
    out = {w[i : i + 3] for w in text.split() for i in range(len(w) - 2)}
    if not text.isascii():
        for run in _HAN_RUN.findall(text):
            out.update(run)
            out.update(run[i : i + 2] for i in range(len(run) - 1))
    return " ".join(out)


def grams(term: str) -> list[str]:
    """The grams a message holding this (whitespace-free) term has for it."""
    t = fold(term)
    out: list[str] = [t[i : i + 3] for i in range(len(t) - 2)]
    if len(t) < 3 and _HAN_RUN.fullmatch(t):
        out.append(t)
    return out


def like_pattern(term: str) -> str:
    escaped = fold(term).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True, slots=True)
class SearchQuery:
    terms: tuple[str, ...]
    grams: tuple[str, ...]
    patterns: tuple[str, ...]
    order_id: int | None

    @property
    def indexable(self) -> bool:
        return bool(self.grams)


class QueryTooShort(ValueError):
    pass


def parse(query: str) -> SearchQuery:
    """Splits on whitespace; every term must match (in one name or one message).

    Raises QueryTooShort when nothing in the query can be looked up: no term of
    three characters, no Han term and no order id.
    """
    terms = tuple(dict.fromkeys(query.split()))[:MAX_TERMS]
    if not terms:
        raise QueryTooShort("query is empty")
    gathered: list[str] = []
    for term in terms:
        gathered.extend(grams(term))
    order_id = None
    if len(terms) == 1 and terms[0].isascii() and terms[0].isdigit():
        value = int(terms[0])
        if 1 <= value <= MAX_ORDER_ID:
            order_id = value
    if not gathered and order_id is None:
        raise QueryTooShort(
            "query needs a term of at least 3 characters, a Chinese term or an order id"
        )
    return SearchQuery(
        terms=terms,
        grams=tuple(dict.fromkeys(gathered)),
        patterns=tuple(like_pattern(t) for t in terms),
        order_id=order_id,
    )
