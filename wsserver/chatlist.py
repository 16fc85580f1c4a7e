"""Chat lists, search and single-chat reads as the legacy REST API shows them.

Which chats a user sees: those they take part in (and have not left) and, for a
manager, every chat of the orders they manage. Lists are newest activity first;
`last_message` is the latest message that is not deleted, in the caller's locale
when a translation exists, cut at a grapheme boundary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import regex

from . import store as store_module
from .errors import Forbidden, NotFound
from .search import SearchQuery
from .search import grams as search_grams
from .store import ATTACHMENTS_COL, MSG_COLS, Store, iso

PREVIEW_MAX_CHARS = 200
SEARCH_MAX_CHATS = 1000
# Search messages chat by chat when the caller sees at most this many messages.
SEARCH_PER_CHAT_MAX_MESSAGES = 20_000
# Matching messages read through the gram index before switching to per chat.
SEARCH_INDEX_CAP = 5_000
# Chats checked against their messages by one statement at first (then doubling,
# to 1,024) when a search walks them newest first.
SEARCH_BATCH = 64
FULFILLMENT_NONE = "не назначен"
_GRAPHEME = regex.compile(r"\X")
_encode = msgspec.json.Encoder().encode

# Chats the user sees: $1 user id, $2 true for a manager.
_VISIBLE = """
vis AS (
    SELECT p.chat_id AS id FROM chat_participants p
     WHERE p.user_id = $1 AND p.left_at IS NULL
    UNION
    SELECT c.id FROM orders o JOIN chats c ON c.order_id = o.id
     WHERE $2 AND o.manager_id = $1
)"""

# Decorates the rows of `page` (chats) with unread and the preview; $1 user, and
# the locale in `%(loc)s` ($3 in lists and search).
_DECORATE_TEMPLATE = """
SELECT pg.id, pg.name, pg.type, pg."group", pg.status, pg.order_id, pg.verification_id,
       pg.metadata, pg.created_at, pg.updated_at, pg.last_message_at,
       CASE WHEN me.user_id IS NULL THEN 0
            ELSE GREATEST(pg.last_seq - me.last_read_seq, 0) END AS unread,
       lm.id AS lm_id, lm.user_id AS lm_user_id, lm.created_at AS lm_created_at,
       left(COALESCE(lm.content ->> %(loc)s, lm.content ->> lm.lang), %(chars)d) AS lm_text
  FROM page pg
  LEFT JOIN chat_participants me
         ON me.chat_id = pg.id AND me.user_id = $1 AND me.left_at IS NULL
  LEFT JOIN LATERAL (
        SELECT m.id, m.user_id, m.created_at, m.content, m.lang
          FROM messages m
         WHERE m.chat_id = pg.id AND m.deleted_at IS NULL
         ORDER BY m.seq DESC LIMIT 1) lm ON true
 ORDER BY pg.updated_at DESC, pg.id DESC
"""


def _decorate(loc: str) -> str:
    return _DECORATE_TEMPLATE % {"loc": loc, "chars": PREVIEW_MAX_CHARS * 2}


_DECORATE = _decorate("$3")

_LIST_SQL = f"""
WITH {_VISIBLE},
page AS (
    SELECT c.* FROM chats c JOIN vis ON vis.id = c.id
     WHERE c.deleted_at IS NULL AND c.status = $4 AND ($5::text IS NULL OR c."group" = $5)
     ORDER BY c.updated_at DESC, c.id DESC
     LIMIT $6 OFFSET $7
)
{_DECORATE}
"""


_CHAT_NAME_SQL = """
SELECT c.id FROM chats c
 WHERE beseda_grams(c.name) @> $1::text[] AND beseda_norm(c.name) LIKE ALL ($2::text[])"""

_PARTICIPANT_NAME_SQL = """
SELECT DISTINCT p.chat_id FROM users u JOIN chat_participants p ON p.user_id = u.id
 WHERE beseda_grams(u.name) @> $1::text[] AND beseda_norm(u.name) LIKE ALL ($2::text[])
   AND p.left_at IS NULL AND p.user_id <> $3"""

# Candidates from the grams the search indexer wrote (sql/0017), rechecked against
# the message's current text.
_MESSAGE_GRAMS_SQL = """
SELECT COALESCE(array_agg(DISTINCT chat_id), '{}') AS chats, count(*) AS n FROM (
    SELECT m.chat_id FROM message_grams g JOIN messages m ON m.id = g.message_id
     WHERE string_to_array(g.grams, ' ') @> $1::text[]
       AND m.deleted_at IS NULL
       AND beseda_norm(beseda_message_text(m.content)) LIKE ALL ($2::text[])
     LIMIT $3) AS hit"""

_MESSAGE_PER_CHAT_SQL = """
SELECT v.id FROM unnest($1::bigint[]) AS v(id)
 WHERE EXISTS (
    SELECT 1 FROM messages m
     WHERE m.chat_id = v.id AND m.deleted_at IS NULL
       AND beseda_norm(beseda_message_text(m.content)) LIKE ALL ($2::text[]))"""



def _iso_sql(col: str) -> str:
    """A timestamptz as `iso()` writes it: UTC, microseconds, `Z`."""
    return f"""to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _members(row: str) -> str:
    """The members of `row_to_json(row)`, compact, without the braces."""
    return f"left(substr(row_to_json({row})::text, 2), -1)"


def _compact_json(expr: str) -> str:
    """A jsonb value as compact JSON (sql/0021_compact_json.sql); `{}`, by far the
    most common metadata, without a function call."""
    return f"(CASE WHEN {expr} = '{{}}'::jsonb THEN '{{}}' ELSE beseda_compact_json({expr}) END)::json"


# A message's metadata as `message_out` gives it: a falsy value is `{}`.
_MESSAGE_METADATA = (
    "CASE WHEN m.metadata IN ('null', 'false', '0', '\"\"', '[]') THEN '{}'::jsonb "
    "ELSE m.metadata END"
)

# One chat for get-chat in one statement: the caller's demo flag, and the chat (only
# if visible) as compact JSON in the wire shape, written by PostgreSQL: the list
# item's fields, `participants` and the latest messages, oldest first, in the
# socket's shape (`message_out`'s fields and order). The JSON comes in two UTF-8
# halves around the value of `last_message`, which is the one thing Python writes:
# the preview is cut between grapheme clusters (`preview`), from `lm_text`.
# Attachments are listed without their signed links, which only the adapter can
# make: `with_attachments` says when to add them. $1 user, $2 manager, $3 chat,
# $4 default locale, $5 messages.
_DETAIL_SQL = f"""
WITH {_VISIBLE},
caller AS (SELECT u.locale, u.is_demo FROM (SELECT 1) AS one LEFT JOIN users u ON u.id = $1),
page AS (
    SELECT c.* FROM chats c JOIN vis ON vis.id = c.id
     WHERE c.id = $3 AND c.deleted_at IS NULL
),
item AS ({_decorate("(SELECT COALESCE(caller.locale, $4::text) FROM caller)")})
SELECT caller.is_demo, item.id IS NOT NULL AS found, item.lm_text, msgs.with_attachments,
       convert_to('{{' || {_members("head")} || ',"last_message":', 'UTF8') AS json_head,
       convert_to(',' || {_members("tail")} || ',"participants":[' || COALESCE(parts.list, '')
                  || '],"messages":[' || COALESCE(msgs.list, '') || ']}}', 'UTF8') AS json_tail
  FROM caller
  LEFT JOIN item ON true
  CROSS JOIN LATERAL (
        SELECT item.id, item.name, item.type, item."group", item.status, item.order_id,
               item.verification_id, {_compact_json("item.metadata")} AS metadata) AS head
  CROSS JOIN LATERAL (
        SELECT item.lm_id AS last_message_id,
               {_iso_sql("item.lm_created_at")} AS last_message_at, item.unread,
               {_iso_sql("item.created_at")} AS created_at,
               {_iso_sql("item.updated_at")} AS updated_at) AS tail
  LEFT JOIN LATERAL (
        SELECT string_agg(row_to_json(p_out)::text, ',' ORDER BY p.joined_at, p.user_id) AS list
          FROM chat_participants p LEFT JOIN users u ON u.id = p.user_id
         CROSS JOIN LATERAL (
               SELECT p.user_id, u.name, p.role, u.role AS user_role, p.last_read_message_id,
                      {_iso_sql("p.joined_at")} AS joined_at) AS p_out
         WHERE p.chat_id = item.id AND p.left_at IS NULL
  ) AS parts ON true
  LEFT JOIN LATERAL (
        SELECT string_agg(row_to_json(m_out)::text, ',' ORDER BY m.seq) AS list,
               bool_or(m.attachments <> '[]'::jsonb) AS with_attachments
          FROM (SELECT {MSG_COLS}, {ATTACHMENTS_COL} FROM messages m
                 WHERE m.chat_id = item.id AND m.deleted_at IS NULL
                 ORDER BY m.seq DESC LIMIT $5) AS m
         CROSS JOIN LATERAL (
               SELECT m.content -> 'ru' AS ru, m.content -> 'en' AS en,
                      m.content -> 'zh' AS zh) AS content_out
         CROSS JOIN LATERAL (
               SELECT m.id, m.chat_id, m.seq, m.rev, m.user_id, m.type,
                      content_out AS content, m.lang,
                      {_compact_json(_MESSAGE_METADATA)} AS metadata,
                      m.attachments, m.reply_to_id, m.message_key,
                      {_iso_sql("m.created_at")} AS created_at,
                      {_iso_sql("m.edited_at")} AS edited_at,
                      {_iso_sql("m.deleted_at")} AS deleted_at) AS m_out
  ) AS msgs ON true
"""


async def _column(conn: asyncpg.Connection, sql: str, *args: Any) -> list[Any]:
    return [r[0] for r in await conn.fetch(sql, *args)]


def preview(text: str | None, limit: int = PREVIEW_MAX_CHARS) -> str | None:
    """At most `limit` code points, cut between grapheme clusters."""
    if text is None or len(text) <= limit:
        return text
    out: list[str] = []
    used = 0
    for g in _GRAPHEME.findall(text):
        if used + len(g) > limit:
            break
        out.append(g)
        used += len(g)
    return "".join(out)


def chat_item(r: Any) -> dict[str, Any]:
    return {
        "id": r["id"],
        "name": r["name"],
        "type": r["type"],
        "group": r["group"],
        "status": r["status"],
        "order_id": r["order_id"],
        "verification_id": r["verification_id"],
        "metadata": r["metadata"],
        "last_message": preview(r["lm_text"]),
        "last_message_id": r["lm_id"],
        "last_message_at": iso(r["lm_created_at"]),
        "unread": r["unread"],
        "created_at": iso(r["created_at"]),
        "updated_at": iso(r["updated_at"]),
    }


@dataclass(frozen=True, slots=True)
class Viewer:
    user_id: int
    role: str
    refuse_demo: bool = False

    @property
    def is_manager(self) -> bool:
        return self.role == "manager"


@dataclass(frozen=True, slots=True)
class Page:
    number: int
    size: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size


class ChatList:
    """Read-only queries behind the legacy endpoints."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.grams = GramStats()

    async def locale(self, conn: asyncpg.Connection, who: Viewer) -> str:
        """The caller's locale; refuses a demo account (by its projection) where the
        endpoint does, in the same round trip."""
        row = await conn.fetchrow("SELECT locale, is_demo FROM users WHERE id = $1", who.user_id)
        if row is not None and row["is_demo"] and who.refuse_demo:
            raise Forbidden("demo accounts may not call this endpoint")
        return str(row["locale"] if row is not None else self.store.default_lang)

    async def list_chats(
        self, who: Viewer, *, archived: bool, group: str | None, page: Page
    ) -> tuple[list[dict[str, Any]], bool]:
        async with self.store.connection() as conn:
            loc = await self.locale(conn, who)
            rows = await conn.fetch(
                _LIST_SQL, who.user_id, who.is_manager, loc,
                "archived" if archived else "active", group, page.size + 1, page.offset,
            )
        items = [chat_item(r) for r in rows[: page.size]]
        return items, len(rows) > page.size

    # -- search --------------------------------------------------------------------

    async def search_ids(
        self, conn: asyncpg.Connection, who: Viewer, q: SearchQuery,
        want: int = SEARCH_MAX_CHATS,
    ) -> list[int]:
        """Visible chats matching the query, newest activity first: the first `want`
        (at most 1,000)."""
        hits = await self.search_hits(conn, who, q)
        return await hits.take(want)

    async def search_hits(self, conn: asyncpg.Connection, who: Viewer, q: SearchQuery) -> "_Hits":
        """The visible chats matching the query, newest activity first, read as far
        as the caller needs (`_Hits.take`).

        Each source is one indexed statement, intersected with the visible chats
        here rather than in one join: the planner cannot estimate how many rows a
        gram lookup returns (a common word matches a large share of all
        messages), and a join planned for one row took seconds. Messages are
        searched through the gram index, with a cap, when the caller sees many
        messages; under the cap that answers every chat at once. Past it (a very
        common term, known beforehand from ANALYZE's statistics or found by
        reaching the cap), or when the caller sees few messages, chats are checked
        one by one, newest first, only until enough match.
        """
        vis_rows = await conn.fetch(
            f"""WITH {_VISIBLE} SELECT c.id, c.last_seq, c.order_id FROM vis
                 JOIN chats c ON c.id = vis.id WHERE c.deleted_at IS NULL
                 ORDER BY c.updated_at DESC, c.id DESC""",
            who.user_id, who.is_manager,
        )
        hits = _Hits(conn, vis_rows)
        if not vis_rows:
            return hits
        if q.order_id is not None:
            rows = await conn.fetch("SELECT id FROM chats WHERE order_id = $1", q.order_id)
            hits.known.update(r["id"] for r in rows)
        if not q.indexable:
            return hits
        grams, patterns = list(q.grams), list(q.patterns)
        hits.known.update(await _column(conn, _CHAT_NAME_SQL, grams, patterns))
        hits.known.update(await _column(conn, _PARTICIPANT_NAME_SQL, grams, patterns, who.user_id))
        if sum(r["last_seq"] for r in vis_rows) > SEARCH_PER_CHAT_MAX_MESSAGES and not (
            await self.grams.looks_common(conn, q)
        ):
            row = await conn.fetchrow(_MESSAGE_GRAMS_SQL, grams, patterns, SEARCH_INDEX_CAP)
            if row["n"] < SEARCH_INDEX_CAP:
                hits.known.update(row["chats"])
                return hits
        hits.patterns = patterns
        return hits

    async def items(
        self, conn: asyncpg.Connection, who: Viewer, loc: str, ids: list[int]
    ) -> list[dict[str, Any]]:
        if not ids:
            return []
        rows = await conn.fetch(
            f"WITH page AS (SELECT c.* FROM chats c WHERE c.id = ANY($2::bigint[])) {_DECORATE}",
            who.user_id, ids, loc,
        )
        return [chat_item(r) for r in rows]

    async def search(
        self, who: Viewer, q: SearchQuery, page: Page
    ) -> tuple[list[dict[str, Any]], bool]:
        async with self.store.connection() as conn:
            loc = await self.locale(conn, who)
            ids = await self.search_ids(conn, who, q, page.offset + page.size + 1)
            chosen = ids[page.offset : page.offset + page.size]
            items = await self.items(conn, who, loc, chosen)
        return items, len(ids) > page.offset + page.size

    # -- orders (manager views) --------------------------------------------------------

    async def _orders(
        self, conn: asyncpg.Connection, who: Viewer, loc: str, chat_ids: list[int],
        extra_orders: list[int],
    ) -> list[dict[str, Any]]:
        """Groups chats by order, newest activity first; orders the manager runs
        with no visible chat yet are listed with an empty `chats`."""
        items = await self.items(conn, who, loc, chat_ids)
        order_ids = list(dict.fromkeys([i["order_id"] for i in items] + extra_orders))
        known = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT id, buyer_id, manager_id, fulfillment_id FROM orders WHERE id = ANY($1)",
                [o for o in order_ids if o is not None],
            )
        }
        groups: dict[int | None, list[dict[str, Any]]] = {o: [] for o in order_ids}
        for item in items:
            groups[item["order_id"]].append(item)
        out = []
        for order_id, chats in groups.items():
            o = known.get(order_id) if order_id is not None else None
            out.append(order_view(order_id, o, chats))
        return out

    async def _order_page_ids(
        self, conn: asyncpg.Connection, who: Viewer, q: SearchQuery, page: Page
    ) -> list[int]:
        """Matching chats enough to fill the page of orders (and tell whether
        another follows): read newest first until one more order than the page
        needs, then the other matching chats of the orders reached, so each
        order shows all of its matching chats. At most 1,000 chats."""
        hits = await self.search_hits(conn, who, q)
        need = page.offset + page.size + 1
        want = min(SEARCH_MAX_CHATS, max(SEARCH_BATCH, need * 2))
        while True:
            ids = await hits.take(want)
            if len(ids) < want or want >= SEARCH_MAX_CHATS:
                return ids
            if len({hits.order_of[i] for i in ids}) >= need:
                break
            want = min(SEARCH_MAX_CHATS, want * 4)
        reached = {hits.order_of[i] for i in ids}
        # Matches already found past `want`, then the chats not yet read.
        later = [c for c in hits.found[len(ids) :] if hits.order_of[c] in reached]
        rest = [c for c in hits.unread() if hits.order_of[c] in reached]
        more = await hits.matching(rest)
        return (ids + later + [c for c in rest if c in more])[:SEARCH_MAX_CHATS]

    async def manager_search(
        self, who: Viewer, q: SearchQuery, page: Page
    ) -> tuple[list[dict[str, Any]], bool]:
        async with self.store.connection() as conn:
            loc = await self.locale(conn, who)
            ids = await self._order_page_ids(conn, who, q, page)
            extra: list[int] = []
            if q.order_id is not None:
                managed = await conn.fetchval(
                    "SELECT id FROM orders WHERE id = $1 AND manager_id = $2", q.order_id, who.user_id
                )
                if managed is not None:
                    extra.append(managed)
            orders = await self._orders(conn, who, loc, ids, extra)
        chosen = orders[page.offset : page.offset + page.size]
        return chosen, len(orders) > page.offset + page.size

    async def manager_order(self, who: Viewer, order_id: int) -> dict[str, Any]:
        async with self.store.connection() as conn:
            loc = await self.locale(conn, who)
            rows = await conn.fetch(
                f"""WITH {_VISIBLE}
                    SELECT c.id FROM chats c JOIN vis ON vis.id = c.id
                     WHERE c.order_id = $3 AND c.deleted_at IS NULL
                     ORDER BY c.updated_at DESC, c.id DESC""",
                who.user_id, who.is_manager, order_id,
            )
            managed = await conn.fetchval(
                "SELECT 1 FROM orders WHERE id = $1 AND manager_id = $2", order_id, who.user_id
            )
            if not rows and managed is None:
                raise NotFound("order not found")
            orders = await self._orders(conn, who, loc, [r["id"] for r in rows], [order_id])
        return orders[0]

    # -- one chat ------------------------------------------------------------------------

    async def check_visible(self, who: Viewer, chat_id: int) -> None:
        """NotFound unless the user sees the chat (archived counts, deleted does not)."""
        async with self.store.connection() as conn:
            found = await conn.fetchval(
                f"""WITH {_VISIBLE}
                    SELECT 1 FROM vis JOIN chats c ON c.id = vis.id AND c.deleted_at IS NULL
                     WHERE vis.id = $3""",
                who.user_id, who.is_manager, chat_id,
            )
        if found is None:
            raise NotFound("chat not found")

    async def chat_detail(
        self, who: Viewer, chat_id: int, messages: int = 50
    ) -> msgspec.Raw | dict[str, Any]:
        """The chat as in lists, with `participants` and its latest `messages`: one
        statement, whose JSON PostgreSQL writes and Python passes through, but for
        the preview and, on a page with attachments, their signed links."""
        async with self.store.connection() as conn:
            row = await conn.fetchrow(
                _DETAIL_SQL, who.user_id, who.is_manager, chat_id, self.store.default_lang, messages
            )
        assert row is not None  # one row always: the caller's, even when unknown
        if row["is_demo"] and who.refuse_demo:
            raise Forbidden("demo accounts may not call this endpoint")
        if not row["found"]:
            raise NotFound("chat not found")
        chat = b"".join((row["json_head"], _encode(preview(row["lm_text"])), row["json_tail"]))
        if row["with_attachments"] and store_module.attachment_url is not None:
            return _with_links(chat, store_module.attachment_url)
        return msgspec.Raw(chat)


# How long the gram frequencies from ANALYZE are reused before being read again.
GRAM_STATS_TTL_S = 600.0
# A term is taken as common (the capped index read is skipped) when the estimate
# is this many times the cap.
GRAM_STATS_MARGIN = 2

_GRAM_STATS_SQL = """
SELECT x.gram, x.freq, (SELECT reltuples FROM pg_class WHERE oid = 'message_grams_idx'::regclass)
       AS rows
  FROM pg_stats s
 CROSS JOIN LATERAL unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS x(gram, freq)
 WHERE s.schemaname = current_schema() AND s.tablename = 'message_grams_idx'
   AND x.gram IS NOT NULL"""


class GramStats:
    """Which search terms match too many messages for the gram index to help,
    from the frequencies ANALYZE keeps for the index's most common grams (read
    once per `GRAM_STATS_TTL_S`). Only picks the faster of two exact ways to
    search: a wrong guess costs time, never results."""

    def __init__(self) -> None:
        self.freq: dict[str, float] = {}
        self.rows = 0.0
        self.read_at: float | None = None

    async def load(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(_GRAM_STATS_SQL)
        self.freq = {r["gram"]: float(r["freq"]) for r in rows}
        self.rows = float(rows[0]["rows"]) if rows else 0.0
        self.read_at = time.monotonic()

    def estimate(self, q: SearchQuery) -> float:
        """Messages the query's grams would match: per term its rarest gram (a
        gram missing from the statistics is rare: 0), terms taken as independent."""
        share = 1.0
        for term in q.terms:
            term_grams = search_grams(term)
            if term_grams:
                share *= min(self.freq.get(g, 0.0) for g in term_grams)
        return share * self.rows

    async def looks_common(self, conn: asyncpg.Connection, q: SearchQuery) -> bool:
        if self.read_at is None or time.monotonic() - self.read_at > GRAM_STATS_TTL_S:
            await self.load(conn)
        return self.estimate(q) > SEARCH_INDEX_CAP * GRAM_STATS_MARGIN


class _Hits:
    """Visible chats (newest activity first) that match a search, found lazily:
    `known` are matches already known (names, order id, the gram index); with
    `patterns` set, the other chats are checked against their messages, in
    growing batches, only as far as `take` needs."""

    def __init__(self, conn: asyncpg.Connection, vis_rows: list[Any]) -> None:
        self.conn = conn
        self.ordered: list[int] = [r["id"] for r in vis_rows]
        self.order_of: dict[int, int | None] = {r["id"]: r["order_id"] for r in vis_rows}
        self.known: set[int] = set()
        self.patterns: list[str] | None = None
        self.found: list[int] = []
        self._next = 0
        self._batch = SEARCH_BATCH

    def unread(self) -> list[int]:
        return self.ordered[self._next :]

    async def matching(self, chats: list[int]) -> set[int]:
        """Which of these chats match (by what is known, or by a message)."""
        out = {c for c in chats if c in self.known}
        check = [c for c in chats if c not in out]
        if check and self.patterns is not None:
            out.update(await _column(self.conn, _MESSAGE_PER_CHAT_SQL, check, self.patterns))
        return out

    async def take(self, want: int) -> list[int]:
        """The first `want` matching chats (fewer when there are no more)."""
        want = min(want, SEARCH_MAX_CHATS)
        if self.patterns is None:  # every match is known: nothing left to read
            if self._next < len(self.ordered):
                self.found = [c for c in self.ordered if c in self.known]
                self._next = len(self.ordered)
            return self.found[:want]
        while len(self.found) < want and self._next < len(self.ordered):
            part = self.ordered[self._next : self._next + self._batch]
            self._next += len(part)
            self._batch = min(self._batch * 2, 1024)
            matched = await self.matching(part)
            self.found.extend(c for c in part if c in matched)
        return self.found[:want]


def _with_links(chat: bytes, url: Callable[[int], str]) -> dict[str, Any]:
    """The chat decoded, each attachment with its signed link (a page with
    attachments is rare: most pass through as PostgreSQL wrote them)."""
    decoded: dict[str, Any] = msgspec.json.decode(chat)
    for msg in decoded["messages"]:
        if msg["attachments"]:
            msg["attachments"] = [{**a, "url": url(a["id"])} for a in msg["attachments"]]
    return decoded


def order_view(
    order_id: int | None, order: Any, chats: list[dict[str, Any]]
) -> dict[str, Any]:
    fulfillment = order["fulfillment_id"] if order is not None else None
    return {
        "order_id": order_id,
        "buyer_id": order["buyer_id"] if order is not None else None,
        "manager_id": order["manager_id"] if order is not None else None,
        "fulfillment_id": fulfillment if fulfillment is not None else FULFILLMENT_NONE,
        "chats": chats,
    }
