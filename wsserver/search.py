"""Search query parsing: terms, the grams an index lookup needs, LIKE patterns.

Mirrors `beseda_grams` in sql/0010_search.sql: a term of three or more characters
is looked up by its trigrams, a term of one or two Han characters by itself (the
index holds Han unigrams and bigrams). Shorter terms in other scripts cannot use
the index; they only narrow what the other terms found.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_QUERY_CHARS = 200
MAX_TERMS = 8
MAX_ORDER_ID = 2**63 - 1


def is_han(ch: str) -> bool:
    c = ord(ch)
    return 0x3400 <= c <= 0x4DBF or 0x4E00 <= c <= 0x9FFF or 0xF900 <= c <= 0xFAFF


def grams(term: str) -> list[str]:
    """The grams `beseda_grams` would index for this (whitespace-free) term."""
    t = term.lower()
    out: list[str] = [t[i : i + 3] for i in range(len(t) - 2)]
    if len(t) < 3 and t and all(is_han(ch) for ch in t):
        out.append(t)
    return out


def like_pattern(term: str) -> str:
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
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
