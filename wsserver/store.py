"""The PostgreSQL store: every query the server and the REST adapter run.

Owns the SQL and the mapping from rows to wire structs. Connection-level failures
(database down, pool exhausted, statement timeout) surface as `Unavailable`; a
caller's mistake surfaces as the matching `BesedaError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn

import asyncpg
import msgspec

from . import metrics
from .errors import BadRequest, BesedaError, Conflict, Forbidden, NotFound, Unavailable
from .protocol import messages as m

log = logging.getLogger(__name__)

SYNC_PAGE = 500
# Replies that page (history, chats.sync) stop early, with has_more, once they pass
# this many bytes, so that one reply always fits a socket's bounded send queue.
REPLY_PAGE_BYTES = 256 * 1024
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 UTC with microseconds, as the contract wants (asyncpg hands out
    timestamptz values in UTC)."""
    if dt is None:
        return None
    return dt.isoformat(timespec="microseconds")[:26] + "Z"


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(
        exc,
        (
            OSError,
            asyncio.TimeoutError,
            asyncpg.InterfaceError,
            asyncpg.QueryCanceledError,
            asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError,
        ),
    ):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", "") or ""
        return state[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
    return False


def db_error_kind(exc: BaseException, acquired: bool) -> str:
    """A bounded label for `beseda_db_errors_total` (docs/ops.md lists the values)."""
    if not acquired and isinstance(exc, asyncio.TimeoutError):
        return "acquire_timeout"
    if isinstance(exc, (asyncpg.QueryCanceledError, asyncio.TimeoutError)):
        return "statement_timeout"
    if isinstance(exc, (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                        asyncpg.TooManyConnectionsError)):
        return "connection"
    if is_unavailable(exc):
        return "unavailable"
    return "query"


MSG_COLS = (
    "m.id, m.chat_id, m.seq, m.rev, m.created_rev, m.user_id, m.type, m.content, "
    "m.lang, m.metadata, m.reply_to_id, m.message_key, m.created_at, m.edited_at, "
    "m.deleted_at"
)
ATTACHMENTS_COL = (
    "COALESCE((SELECT jsonb_agg(jsonb_build_object('id', a.id, 'type', a.type, "
    "'mime_type', a.mime_type, 'size', a.size, 'name', a.name, 'status', a.status, "
    "'metadata', a.metadata) ORDER BY a.id) FROM message_attachments a "
    "WHERE a.message_id = m.id), '[]'::jsonb) AS attachments"
)


# Set by the HTTP app: an attachment id to its signed download link.
attachment_url: Callable[[int], str] | None = None


def message_out(r: Any, attachments: list[dict[str, Any]] | None = None) -> m.MessageOut:
    deleted = r["deleted_at"] is not None
    content = r["content"] or {}
    if attachments is None:
        try:
            attachments = r["attachments"]
        except KeyError:
            attachments = []
    if attachments and attachment_url is not None and not deleted:
        attachments = [{**a, "url": attachment_url(a["id"])} for a in attachments]
    return m.MessageOut(
        id=r["id"],
        chat_id=r["chat_id"],
        seq=r["seq"],
        rev=r["rev"],
        user_id=r["user_id"],
        type=r["type"],
        content=m.Content()
        if deleted
        else m.Content(ru=content.get("ru"), en=content.get("en"), zh=content.get("zh")),
        lang=r["lang"],
        metadata=r["metadata"] or {},
        attachments=[] if deleted else (attachments or []),
        reply_to_id=r["reply_to_id"],
        message_key=r["message_key"],
        created_at=iso(r["created_at"]) or "",
        edited_at=iso(r["edited_at"]),
        deleted_at=iso(r["deleted_at"]),
    )


def fitting(items: Sequence[Any], budget: int) -> int:
    """How many leading items fit in `budget` bytes once encoded (at least one)."""
    used = 0
    for n, item in enumerate(items):
        used += len(m.encode(item))
        if used > budget and n > 0:
            return n
    return len(items)


def _content(lang: str, text: str | None) -> m.Content:
    if not text:
        return m.Content()
    return m.Content(**{lang: text})


def send_ack(msg: m.MessageOut, duplicate: bool) -> m.SendAck:
    return m.SendAck(**{f: getattr(msg, f) for f in msg.__struct_fields__}, duplicate=duplicate)


@dataclass(slots=True)
class SendRow:
    """One message.send (or system message) headed for the batch writer."""

    chat_id: int
    user_id: int | None
    message_key: str
    type: str
    text: str | None
    lang: str | None
    metadata: str | None  # JSON text
    reply_to_id: int | None
    check_member: bool = True
    attachments: list[int] = field(default_factory=list)


@dataclass(slots=True)
class SendResult:
    message: m.MessageOut | None = None
    duplicate: bool = False
    members: list[int] = field(default_factory=list)
    error: BesedaError | None = None


# A batch of sends is one statement, one round trip, and (without attachments) its
# own transaction. It checks every row (duplicate key, chat visible to the sender
# and active, reply in the same chat); the rows that pass get message ids, each
# chat's counters move once for all its rows, the rows are numbered in arrival
# order, inserted, queued for the search indexer (wsserver/search_index.py), and
# each sender's read horizon moves: the sender has read what they sent, so `unread`
# never counts a user's own messages. A refused row takes no seq. Each row comes
# back with its verdict: for a duplicate, the stored message; for a new one, its
# id, seq, rev and (on the first row of its chat) the chat's members.
#
# Two statements (check, then write) were measured first: the second round trip,
# with its statement overhead on both sides, cost a tenth of the server's CPU per
# message and a loop turn per batch.
#
# Lookups are LATERAL subqueries on one key (LIMIT 1 keeps the planner from
# flattening them into joins), and every table is also reached by `= ANY` of the
# batch's own ids, so the only plans are index lookups driven by the batch's rows,
# however empty the tables were when the plan was made (see KEYED_ONLY below).
# Chats are locked in id order (an index scan on `= ANY` of the sorted ids), so
# concurrent nodes do not deadlock; participants after chats, in (chat, user)
# order, as the receipt flush does; a deadlock with anything else is retried like a
# key race. A participant row another transaction holds (a receipt flush, a read
# from the sender's other device) is waited for: skipping it left the sender's own
# message unread for them. The checks read the statement's snapshot, so before
# anything is numbered the statement locks the batch's chats (`held`, in id order)
# and then its senders' participant rows (`still`): a lock taken on a row that a
# transaction committed meanwhile rechecks the row's newest version, so a chat
# archived or deleted, or a sender removed, while the statement waited for the
# chat's lock (a removal holds it) drops out there. Such rows are not inserted and
# come back `moved`; the writer runs them again in a new statement, whose check
# sees the change. A chat that changed under the lock also comes back `changed`,
# and the writer reads its members again for the fan-out. (Found by the newcomer
# attack: a participant removed while their sends were in flight still had up to
# a batch of them stored after the leave, and the fan-out, read from the old
# snapshot, still reached them. Comparing the chat's `rev` instead refused every
# send that met another node's send to the same chat.) Data-modifying CTEs run to
# completion whether or not the final SELECT reads them. Nothing is quadratic in
# the batch beyond tuplestore scans: each chat finds its counts in the arrays with
# array_position, and the checked and numbered rows are materialized once.
_SEND_SQL = f"""
WITH q AS MATERIALIZED (
    SELECT i.idx, i.chat_id, i.user_id, i.message_key, i.type, i.body, i.metadata,
           i.reply_to_id, i.check_member,
           CASE
               WHEN c.id IS NULL THEN 'not_found'
               WHEN i.check_member AND (p.user_id IS NULL OR p.left_at IS NOT NULL)
                   THEN 'not_found'
               WHEN d.id IS NOT NULL AND d.user_id IS NOT DISTINCT FROM i.user_id
                   THEN 'duplicate'
               WHEN d.id IS NOT NULL THEN 'key_taken'
               WHEN c.deleted_at IS NOT NULL THEN 'deleted'
               WHEN c.status <> 'active' THEN 'archived'
               WHEN i.reply_to_id IS NOT NULL AND r.chat_id IS DISTINCT FROM i.chat_id
                   THEN 'bad_reply'
               ELSE 'ok'
           END AS verdict,
           COALESCE(i.lang, u.locale, $11) AS final_lang,
           d.id AS dup_id, c.rev AS chat_rev
      FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                  $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bool[])
           AS i(idx, chat_id, user_id, message_key, type, body, lang, metadata,
                reply_to_id, check_member)
      LEFT JOIN LATERAL (
          SELECT d.id, d.user_id FROM (
              SELECT d.id, d.user_id, d.chat_id, d.message_key FROM messages d
               WHERE (d.chat_id, d.message_key) >= (i.chat_id, i.message_key)
               ORDER BY d.chat_id, d.message_key LIMIT 1) d
           WHERE d.chat_id = i.chat_id AND d.message_key = i.message_key) d ON true
      LEFT JOIN LATERAL (
          SELECT c.id, c.deleted_at, c.status, c.rev FROM chats c
           WHERE c.id = i.chat_id LIMIT 1) c ON true
      LEFT JOIN LATERAL (
          SELECT p.user_id, p.left_at FROM chat_participants p
           WHERE p.chat_id = i.chat_id AND p.user_id = i.user_id LIMIT 1) p ON true
      LEFT JOIN LATERAL (
          SELECT r.chat_id FROM messages r
           WHERE r.id = i.reply_to_id LIMIT 1) r ON true
      LEFT JOIN LATERAL (
          SELECT u.locale FROM users u
           WHERE u.id = i.user_id AND i.lang IS NULL LIMIT 1) u ON true
),
held AS MATERIALIZED (
    SELECT c.id FROM chats c
     WHERE c.id = ANY($2::bigint[]) AND c.id IN (SELECT q.chat_id FROM q WHERE q.verdict = 'ok')
       AND c.status = 'active' AND c.deleted_at IS NULL
     ORDER BY c.id
       FOR UPDATE OF c
),
still AS MATERIALIZED (
    SELECT p.chat_id, p.user_id FROM chat_participants p
     WHERE p.chat_id = ANY($2::bigint[]) AND p.user_id = ANY($3::bigint[])
       AND p.chat_id IN (SELECT h.id FROM held h) AND p.left_at IS NULL
     ORDER BY p.chat_id, p.user_id
       FOR SHARE OF p
),
fresh AS MATERIALIZED (
    SELECT s.*, row_number() OVER (PARTITION BY s.chat_id ORDER BY s.idx) AS k,
           nextval('messages_id_seq'::regclass) AS id
      FROM (SELECT * FROM q
             WHERE q.verdict = 'ok' AND q.chat_id IN (SELECT h.id FROM held h)
               AND (NOT q.check_member OR (q.chat_id, q.user_id) IN (
                       SELECT t.chat_id, t.user_id FROM still t))
             ORDER BY q.chat_id, q.idx) s
),
counts AS MATERIALIZED (
    SELECT array_agg(g.chat_id ORDER BY g.chat_id) AS ids,
           array_agg(g.n ORDER BY g.chat_id) AS ns,
           array_agg(g.last_id ORDER BY g.chat_id) AS last_ids
      FROM (SELECT f.chat_id, count(*) AS n, (array_agg(f.id ORDER BY f.k DESC))[1] AS last_id
              FROM fresh f GROUP BY f.chat_id) g
),
alloc AS (
    UPDATE chats c
       SET last_seq = c.last_seq + x.ns[array_position(x.ids, c.id)],
           rev = c.rev + x.ns[array_position(x.ids, c.id)],
           last_message_id = x.last_ids[array_position(x.ids, c.id)],
           last_message_at = now(), updated_at = now()
      FROM counts x
     WHERE c.id = ANY(x.ids) AND c.id = ANY($2::bigint[])
       AND c.status = 'active' AND c.deleted_at IS NULL
    RETURNING c.id,
              c.last_seq - x.ns[array_position(x.ids, c.id)] AS seq0,
              c.rev - x.ns[array_position(x.ids, c.id)] AS rev0
),
ins AS (
    INSERT INTO messages (id, chat_id, seq, rev, created_rev, user_id, type, content, lang,
                          metadata, reply_to_id, message_key)
    SELECT f.id, f.chat_id, a.seq0 + f.k, a.rev0 + f.k, a.rev0 + f.k, f.user_id, f.type,
           CASE WHEN COALESCE(f.body, '') = '' THEN '{{}}'::jsonb
                ELSE jsonb_build_object(f.final_lang, f.body) END,
           f.final_lang, COALESCE(NULLIF(f.metadata, ''), '{{}}')::jsonb, f.reply_to_id,
           f.message_key
      FROM fresh f JOIN alloc a ON a.id = f.chat_id
    RETURNING id, chat_id, seq, user_id
),
queued AS (
    INSERT INTO message_grams_queue (message_id) SELECT id FROM ins
),
latest AS (
    SELECT DISTINCT ON (chat_id, user_id) chat_id, user_id, seq, id
      FROM ins WHERE user_id IS NOT NULL
     ORDER BY chat_id, user_id, seq DESC
),
free AS (
    SELECT p.chat_id, p.user_id, x.seq, x.id
      FROM chat_participants p
      JOIN latest x ON p.chat_id = x.chat_id AND p.user_id = x.user_id
     WHERE p.chat_id = ANY($2::bigint[]) AND p.user_id = ANY($3::bigint[])
       AND p.last_read_seq < x.seq
     ORDER BY p.chat_id, p.user_id
       FOR UPDATE OF p
),
horizons AS (
    UPDATE chat_participants p
       SET last_read_seq = f.seq, last_read_message_id = f.id, last_read_at = now(),
           delivered_seq = GREATEST(p.delivered_seq, f.seq)
      FROM free f
     WHERE p.chat_id = ANY($2::bigint[]) AND p.user_id = ANY($3::bigint[])
       AND p.chat_id = f.chat_id AND p.user_id = f.user_id
),
done AS MATERIALIZED (
    SELECT f.idx, f.id, a.seq0 + f.k AS seq, a.rev0 + f.k AS rev,
           a.rev0 <> f.chat_rev AS changed,
           CASE WHEN f.k = 1 THEN
               ARRAY(SELECT p.user_id FROM chat_participants p
                      WHERE p.chat_id = a.id AND p.left_at IS NULL) END AS members
      FROM fresh f JOIN alloc a ON a.id = f.chat_id
)
SELECT q.idx,
       CASE WHEN q.verdict = 'ok' AND n.idx IS NULL THEN 'moved' ELSE q.verdict END
           AS verdict,
       q.final_lang, n.id AS new_id, n.seq AS new_seq, n.rev AS new_rev, n.members,
       n.changed,
       now() AS created,
       {MSG_COLS.replace("m.", "d.")},
       CASE WHEN d.id IS NOT NULL THEN (
           SELECT jsonb_agg(jsonb_build_object('id', t.id, 'type', t.type,
               'mime_type', t.mime_type, 'size', t.size, 'name', t.name,
               'status', t.status, 'metadata', t.metadata) ORDER BY t.id)
             FROM message_attachments t WHERE t.message_id = d.id) END AS attachments
  FROM q
  LEFT JOIN done n ON n.idx = q.idx
  LEFT JOIN LATERAL (
      SELECT * FROM messages d WHERE d.id = q.dup_id LIMIT 1) d ON true
"""

# A receipt flush: moves each (chat, user) delivered horizon forward, never back,
# locking the rows in key order so concurrent flushes cannot deadlock.
_MARK_DELIVERED_SQL = """
WITH x AS (
     SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[])
         AS t(chat_id, user_id, seq)),
locked AS (
     SELECT p.chat_id, p.user_id, x.seq
       FROM chat_participants p
       JOIN x ON p.chat_id = x.chat_id AND p.user_id = x.user_id
      WHERE p.chat_id = ANY($1::bigint[]) AND p.user_id = ANY($2::bigint[])
        AND p.delivered_seq < x.seq
      ORDER BY p.chat_id, p.user_id
        FOR UPDATE OF p),
upd AS (
     UPDATE chat_participants p
        SET delivered_seq = l.seq, delivered_at = now()
       FROM locked l
      WHERE p.chat_id = ANY($1::bigint[]) AND p.user_id = ANY($2::bigint[])
        AND p.chat_id = l.chat_id AND p.user_id = l.user_id
  RETURNING p.chat_id, p.user_id, p.delivered_seq)
SELECT upd.chat_id, upd.user_id, msg.id AS message_id,
       (SELECT array_agg(user_id) FROM chat_participants cp
         WHERE cp.chat_id = upd.chat_id AND cp.left_at IS NULL) AS members
  FROM upd
  CROSS JOIN LATERAL (
      SELECT msg.id FROM (
          SELECT msg.id, msg.chat_id, msg.seq FROM messages msg
           WHERE (msg.chat_id, msg.seq) >= (upd.chat_id, upd.delivered_seq)
           ORDER BY msg.chat_id, msg.seq LIMIT 1) msg
       WHERE msg.chat_id = upd.chat_id AND msg.seq = upd.delivered_seq) msg
"""

# `a.id = ANY($1)` keys the attachments side by primary key whichever side the
# planner puts first (else it may walk every unclaimed upload).
_CLAIM_ATTACHMENTS_SQL = """
UPDATE message_attachments a
   SET message_id = x.message_id
  FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS x(att_id, message_id, user_id)
 WHERE a.id = ANY($1::bigint[]) AND a.id = x.att_id AND a.uploader_id = x.user_id
   AND a.message_id IS NULL
RETURNING a.id, a.message_id, a.type, a.mime_type, a.size, a.name, a.status, a.metadata
"""

# The writer's statements reach every row by key from a few arrays, so on its
# connections (and in a receipt flush's transaction) the planner gets only index
# scans and nested loops: no table scan, and no merge join, which would walk an
# index from its first key to the batch's largest one (millions of chats or
# participants in production). With that, one generic plan is right for any batch
# size, so it is made once per connection and kept (`force_generic_plan`): left to
# itself, PostgreSQL re-planned the check statement on every call (the generic
# plan assumes 10 rows per array, the custom one knows the real count), which was
# 0.55 ms of its CPU per batch, more than executing it. See Store.lease.
_NESTED_LOOPS_ONLY = ("enable_seqscan", "enable_mergejoin", "enable_hashjoin")
KEYED_ONLY = "; ".join(
    [f"SET {name} = off" for name in _NESTED_LOOPS_ONLY]
    + ["SET plan_cache_mode = force_generic_plan"]
)
KEYED_ONLY_LOCAL = "; ".join(f"SET LOCAL {name} = off" for name in _NESTED_LOOPS_ONLY)
KEYED_ONLY_RESET = "; ".join(
    f"RESET {name}" for name in (*_NESTED_LOOPS_ONLY, "plan_cache_mode")
)

_VERDICT_ERRORS: dict[str, BesedaError] = {
    "not_found": NotFound("chat not found"),
    "archived": Conflict("chat is archived"),
    "deleted": Conflict("chat is deleted"),
    "key_taken": Conflict("message_key is already used in this chat by another sender"),
    "bad_reply": BadRequest("`data.reply_to_id` is not a message of this chat"),
}


class AttachmentClaimFailed(Exception):
    def __init__(self, bad_idx: set[int]) -> None:
        super().__init__("attachment claim failed")
        self.bad_idx = bad_idx


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: msgspec.json.encode(v).decode(),
        decoder=msgspec.json.decode,
        schema="pg_catalog",
    )


async def _reset_connection(conn: asyncpg.Connection) -> None:
    return None


def _open(conn: asyncpg.Connection) -> bool:
    """Whether a pooled connection is still open. One the server closed has been
    taken back by the pool already, and its proxy refuses every call."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


def _raise_storage_error(exc: Exception, *, acquired: bool) -> NoReturn:
    """Counts a database error by kind and raises it again, as `Unavailable` when the
    database cannot be reached (the client retries with the same key)."""
    metrics.DB_ERRORS.labels(kind=db_error_kind(exc, acquired)).inc()
    if is_unavailable(exc):
        raise Unavailable("storage unavailable: retry with the same message_key") from exc
    raise exc


class Store:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        default_lang: str = "ru",
        acquire_timeout_s: float = 5.0,
        page_bytes: int = REPLY_PAGE_BYTES,
        session_settings: bool = True,
        keep_idle_s: float = 0.0,
    ) -> None:
        self.pool = pool
        # Connections given back by `connection` blocks, kept for the next one
        # (newest last, with when each was given back): see `connection`.
        self.keep_idle_s = keep_idle_s
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        self._waiting = 0  # tasks of this store waiting for the pool
        # False behind pgbouncer in transaction mode: a session SET would stay on a
        # server connection other clients get next (and without prepared statements
        # every plan is made afresh, so there is no stale plan to guard against).
        self.session_settings = session_settings
        self.page_bytes = page_bytes
        self.default_lang = default_lang
        self.acquire_timeout_s = acquire_timeout_s

    @staticmethod
    def connection_init() -> Any:
        return _init_connection

    @staticmethod
    def connection_reset() -> Any:
        """What the pool runs when a connection comes back. asyncpg already rolls
        back an open transaction; we keep no session state (no SET, LISTEN or
        advisory locks on pooled connections), so the default reset query, one
        round trip per release, is skipped."""
        return _reset_connection

    @property
    def idle_kept(self) -> int:
        """Connections kept idle for the next `connection` block."""
        return len(self._idle)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for a block of queries; database trouble becomes `Unavailable`.

        Connections come from the pool. With `keep_idle_s`, the store keeps those
        given back and hands them out again itself, newest first, which costs
        next to nothing: asyncpg's acquire and release with a timeout cost about
        200 us of CPU per request on Python 3.11 (a task and two timers each time),
        as much as the rest of a get-chat. One goes back to the pool when a task of
        this store waits for the pool, when it has been kept idle longer than
        `keep_idle_s`, when it is closed or in a transaction, when its block
        raised, and at `close`.

        Counts pool waiters and acquire time (pool saturation) and every database
        error that leaves the block, by kind."""
        conn = await self._take()
        clean = False
        try:
            yield conn
            clean = True
        except BesedaError:
            raise
        except Exception as exc:
            _raise_storage_error(exc, acquired=True)
        finally:
            if clean and self._keeps(conn):
                now = time.monotonic()
                self._idle.append((conn, now))
                if now - self._idle[0][1] > self.keep_idle_s:
                    await self._to_pool(self._idle.pop(0)[0])
            else:
                await self._to_pool(conn)

    def _keeps(self, conn: asyncpg.Connection) -> bool:
        return (
            self.keep_idle_s > 0 and not self._waiting
            and _open(conn) and not conn.is_in_transaction()
        )

    async def _take(self) -> asyncpg.Connection:
        """The newest kept connection, else one from the pool."""
        while self._idle:
            conn = self._idle.pop()[0]
            if _open(conn):
                return conn
            await self._to_pool(conn)
        return await self._acquire()

    async def _acquire(self) -> asyncpg.Connection:
        started = time.perf_counter()
        self._waiting += 1
        metrics.DB_POOL_WAITING.inc()
        try:
            conn = await self.pool.acquire(timeout=self.acquire_timeout_s)
        except Exception as exc:
            _raise_storage_error(exc, acquired=False)
        finally:
            self._waiting -= 1
            metrics.DB_POOL_WAITING.dec()
        metrics.DB_POOL_ACQUIRE_SECONDS.observe(time.perf_counter() - started)
        return conn

    async def _to_pool(self, conn: asyncpg.Connection) -> None:
        try:
            await self.pool.release(conn, timeout=5)
        except Exception:
            log.warning("db.release_failed", exc_info=True)

    async def close(self) -> None:
        """Gives the kept connections back to the pool and keeps no more, so that
        the pool can close."""
        self.keep_idle_s = 0.0
        while self._idle:
            await self._to_pool(self._idle.pop()[0])

    # -- sends -----------------------------------------------------------------

    async def write_sends(
        self, rows: Sequence[SendRow], conn: asyncpg.Connection | None = None
    ) -> list[SendResult]:
        """Stores a batch in one statement; each row gets its own result."""
        if conn is not None:
            try:
                return await self._write_sends(conn, list(range(len(rows))), rows)
            except BesedaError:
                raise
            except Exception as exc:
                _raise_storage_error(exc, acquired=True)
        async with self.connection() as conn:
            return await self._write_sends(conn, list(range(len(rows))), rows)

    async def lease(self) -> asyncpg.Connection:
        """A connection kept by a long-lived worker (a writer lane); give it back
        with `release`. Counted with the pool metrics like `connection`.

        The writer only ever reaches rows by key, so its connection tells the
        planner to use index lookups in nested loops and nothing else, and to plan
        each statement once (`KEYED_ONLY`): asyncpg prepares each statement once,
        and a generic plan made while a table was nearly empty (a new database, the
        first minute before autoanalyze) would otherwise keep hash-joining against
        full scans of `messages` as it grows. Measured: nine times the PostgreSQL
        CPU per message after 40,000 sends into a new database; and re-planning the
        check on every batch cost more than running it.
        """
        conn = await self._take()
        try:
            if self.session_settings:
                await conn.execute(KEYED_ONLY)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                conn.terminate()
            await self.release(conn)
            if isinstance(exc, Exception):
                metrics.DB_ERRORS.labels(kind=db_error_kind(exc, True)).inc()
                if is_unavailable(exc):
                    raise Unavailable("storage unavailable: retry with the same message_key") from exc
            raise
        return conn

    async def release(self, conn: asyncpg.Connection) -> None:
        """Gives a leased connection back; never raises. A connection that cannot
        take the RESET (broken, or stuck in a transaction) is closed and the pool
        opens a new one in its place."""
        if self.session_settings:
            try:
                if conn.is_in_transaction():
                    conn.terminate()
                elif not conn.is_closed():
                    await conn.execute(KEYED_ONLY_RESET, timeout=5)
            except Exception:
                # Also when asyncpg already took back a connection the server closed.
                with contextlib.suppress(Exception):
                    conn.terminate()
        try:
            await self.pool.release(conn, timeout=5)
        except Exception:
            log.warning("db.release_failed", exc_info=True)

    async def _write_sends(
        self, conn: asyncpg.Connection, idxs: list[int], rows: Sequence[SendRow]
    ) -> list[SendResult]:
        results = [SendResult() for _ in rows]
        pending = idxs
        for _attempt in range(4):
            try:
                pending = await self._run_send_statement(conn, pending, rows, results)
                if not pending:
                    return results
                # Rows whose chat changed under the statement: run them again.
                continue
            except AttachmentClaimFailed as exc:
                for i in exc.bad_idx:
                    results[i] = SendResult(
                        error=Conflict("attachment is not yours or already used")
                    )
                pending = [i for i in pending if i not in exc.bad_idx]
            except (asyncpg.UniqueViolationError, asyncpg.DeadlockDetectedError,
                    asyncpg.SerializationError):
                # A concurrent writer stored the same key (or locked chats in the
                # other order): the retry sees its commit and answers duplicate.
                continue
            except asyncpg.PostgresError as exc:
                if is_unavailable(exc):
                    raise
                if len(pending) == 1:
                    log.warning("writer.row_failed sqlstate=%s", exc.sqlstate)
                    results[pending[0]] = SendResult(error=BadRequest("message was refused"))
                    return results
                half = len(pending) // 2
                for part in (pending[:half], pending[half:]):
                    sub = await self._write_sends(conn, part, rows)
                    for i in part:
                        results[i] = sub[i]
                return results
        for i in pending:
            if results[i].message is None and results[i].error is None:
                results[i] = SendResult(error=Unavailable("storage busy: retry"))
        return results

    async def _run_send_statement(
        self,
        conn: asyncpg.Connection,
        idxs: list[int],
        rows: Sequence[SendRow],
        results: list[SendResult],
    ) -> list[int]:
        """Runs the statement for `idxs`, filling in their results; returns the rows
        whose chat changed between the statement's snapshot and its lock (to be run
        again)."""
        if not idxs:
            return []
        sel = [rows[i] for i in idxs]
        args = (
            idxs,
            [r.chat_id for r in sel],
            [r.user_id for r in sel],
            [r.message_key for r in sel],
            [r.type for r in sel],
            [r.text for r in sel],
            [r.lang for r in sel],
            [r.metadata for r in sel],
            [r.reply_to_id for r in sel],
            [r.check_member for r in sel],
            self.default_lang,
        )
        claimed: dict[int, list[dict[str, Any]]] = {}
        moved: list[int] = []
        stale: list[int] = []
        if any(r.attachments for r in sel):
            async with conn.transaction():
                new = self._verdicts(await conn.fetch(_SEND_SQL, *args), rows, results,
                                     moved, stale)
                claimed = await self._claim_attachments(conn, new, rows)
        else:
            new = self._verdicts(await conn.fetch(_SEND_SQL, *args), rows, results, moved, stale)
        if stale:
            # The chat changed while the statement waited for it (a participant
            # removed or added, on another node or the REST side): its members are
            # read again, now, so the fan-out follows the change. A chat's rows share
            # one members list.
            now = {chat_id: await self._members(conn, chat_id) for chat_id in stale}
            for values, _idx, members, _created in new:
                if values[1] in now:
                    members[:] = now[values[1]]
        for values, idx, members, created_at in new:
            row = rows[idx]
            msg = m.MessageOut(
                id=values[0], chat_id=values[1], seq=values[2], rev=values[3],
                user_id=row.user_id, type=row.type, content=_content(values[4], row.text),
                lang=values[4], metadata=msgspec.Raw(row.metadata.encode()) if row.metadata else {},
                attachments=claimed.get(values[0], []), reply_to_id=row.reply_to_id,
                message_key=row.message_key, created_at=created_at, edited_at=None,
                deleted_at=None,
            )
            results[idx] = SendResult(message=msg, members=members)
        return moved

    @staticmethod
    def _verdicts(
        recs: list[Any], rows: Sequence[SendRow], results: list[SendResult], moved: list[int],
        stale: list[int],
    ) -> list[tuple[tuple[Any, ...], int, list[int], str]]:
        """Fills in the refused and duplicate rows' results, lists the moved ones in
        `moved` and the chats whose members may have changed in `stale`; returns (id, chat, seq, rev, lang) of each stored row with its
        index, its chat's members and its creation time. The statement names the
        members on a chat's first row only."""
        new: list[tuple[tuple[Any, ...], int, list[int], str]] = []
        members: dict[int, list[int]] = {}
        stored: list[Any] = []
        for rec in recs:
            verdict = rec["verdict"]
            if verdict == "ok":
                stored.append(rec)
                if rec["members"] is not None:
                    members[rows[rec["idx"]].chat_id] = list(rec["members"])
                    if rec["changed"]:
                        stale.append(rows[rec["idx"]].chat_id)
            elif verdict == "duplicate":
                results[rec["idx"]] = SendResult(message=message_out(rec), duplicate=True)
            elif verdict == "moved":
                moved.append(rec["idx"])
            else:
                results[rec["idx"]] = SendResult(error=_VERDICT_ERRORS[verdict])
        moved.sort()
        created = iso(stored[0]["created"]) or "" if stored else ""  # now(): one per statement
        for rec in stored:
            idx = rec["idx"]
            chat_id = rows[idx].chat_id
            values = (rec["new_id"], chat_id, rec["new_seq"], rec["new_rev"], rec["final_lang"])
            new.append((values, idx, members[chat_id], created))
        return new

    async def _claim_attachments(
        self,
        conn: asyncpg.Connection,
        new: list[tuple[tuple[Any, ...], int, list[int], str]],
        rows: Sequence[SendRow],
    ) -> dict[int, list[dict[str, Any]]]:
        att_ids: list[int] = []
        msg_ids: list[int] = []
        users: list[int | None] = []
        owner: dict[int, int] = {}
        twice: set[int] = set()
        for values, idx, _members, _created in new:
            row = rows[idx]
            for att in row.attachments:
                if att in owner:
                    # Listed twice by one message: claimed once. Claimed by two
                    # messages of the batch: the later one fails, as it would in
                    # a later batch (one UPDATE would quietly serve both).
                    if owner[att] != idx:
                        twice.add(idx)
                    continue
                att_ids.append(att)
                msg_ids.append(values[0])
                users.append(row.user_id)
                owner[att] = idx
        if twice:
            raise AttachmentClaimFailed(twice)
        if not att_ids:
            return {}
        got = await conn.fetch(_CLAIM_ATTACHMENTS_SQL, att_ids, msg_ids, users)
        got_ids = {r["id"] for r in got}
        bad = {owner[a] for a in att_ids if a not in got_ids}
        if bad:
            raise AttachmentClaimFailed(bad)
        out: dict[int, list[dict[str, Any]]] = {}
        for r in sorted(got, key=lambda r: r["id"]):
            att = {k: r[k] for k in ("id", "type", "mime_type", "size", "name", "status", "metadata")}
            if attachment_url is not None:
                att["url"] = attachment_url(r["id"])
            out.setdefault(r["message_id"], []).append(att)
        return out

    # -- reads -----------------------------------------------------------------

    async def chat_for_member(self, conn: asyncpg.Connection, chat_id: int, user_id: int) -> Any:
        """The chat row when the user takes part in it (and has not left), else NotFound."""
        row = await conn.fetchrow(
            """SELECT c.id, c.status, c.last_seq, c.rev, p.last_read_seq
                 FROM chats c JOIN chat_participants p ON p.chat_id = c.id
                WHERE c.id = $1 AND p.user_id = $2 AND p.left_at IS NULL
                  AND c.deleted_at IS NULL""",
            chat_id,
            user_id,
        )
        if row is None:
            raise NotFound("chat not found")
        return row

    async def is_member(self, chat_id: int, user_id: int) -> bool:
        async with self.connection() as conn:
            try:
                await self.chat_for_member(conn, chat_id, user_id)
            except NotFound:
                return False
            return True

    async def members(self, chat_id: int) -> list[int]:
        async with self.connection() as conn:
            return await self._members(conn, chat_id)

    async def history(
        self,
        user_id: int,
        chat_id: int,
        before_seq: int | None,
        after_seq: int | None,
        limit: int,
    ) -> m.HistoryAck:
        async with self.connection() as conn:
            await self.chat_for_member(conn, chat_id, user_id)
            if after_seq is not None:
                rows = await conn.fetch(
                    f"""SELECT {MSG_COLS}, {ATTACHMENTS_COL} FROM messages m
                         WHERE m.chat_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3""",
                    chat_id, after_seq, limit + 1,
                )
                has_more = len(rows) > limit
                msgs = [message_out(r) for r in rows[:limit]]
                fit = fitting(msgs, self.page_bytes)
                return m.HistoryAck(messages=msgs[:fit], has_more=has_more or fit < len(msgs))
            else:
                bound = before_seq if before_seq is not None else 2**63 - 1
                rows = await conn.fetch(
                    f"""SELECT {MSG_COLS}, {ATTACHMENTS_COL} FROM messages m
                         WHERE m.chat_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3""",
                    chat_id, bound, limit + 1,
                )
                has_more = len(rows) > limit
                # newest first, so the page kept is the one next to the cursor
                msgs = [message_out(r) for r in rows[:limit]]
                fit = fitting(msgs, self.page_bytes)
                return m.HistoryAck(
                    messages=msgs[:fit][::-1], has_more=has_more or fit < len(msgs)
                )

    async def sync(self, user_id: int, chats: Sequence[m.SyncChat]) -> m.SyncAck:
        out: list[m.SyncChatOut] = []
        async with self.connection() as conn:
            for item in chats:
                out.append(await self._sync_one(conn, user_id, item.chat_id, item.rev))
        return m.SyncAck(chats=out)

    async def _sync_one(
        self, conn: asyncpg.Connection, user_id: int, chat_id: int, since: int
    ) -> m.SyncChatOut:
        try:
            chat = await self.chat_for_member(conn, chat_id, user_id)
        except NotFound:
            return m.SyncChatOut(chat_id=chat_id, rev=0, changes=[], has_more=False, reset=True)
        if since > chat["rev"]:
            return m.SyncChatOut(
                chat_id=chat_id, rev=chat["rev"], changes=[], has_more=False, reset=True
            )
        rows = await conn.fetch(
            f"""SELECT {MSG_COLS}, {ATTACHMENTS_COL} FROM messages m
                 WHERE m.chat_id = $1 AND m.rev > $2 AND m.rev <= $3
                 ORDER BY m.rev LIMIT $4""",
            chat_id, since, chat["rev"], SYNC_PAGE + 1,
        )
        events = await conn.fetch(
            """SELECT rev, type, data FROM chat_events
                WHERE chat_id = $1 AND rev > $2 AND rev <= $3 ORDER BY rev LIMIT $4""",
            chat_id, since, chat["rev"], SYNC_PAGE + 1,
        )
        changes: list[tuple[int, m.Change]] = []
        for r in rows:
            msg = message_out(r)
            if r["deleted_at"] is not None:
                kind = "chat.message.delete"
            elif r["created_rev"] > since:
                kind = "chat.message.new"
            else:
                kind = "chat.message.update"
            changes.append((r["rev"], m.Change(type=kind, data=msg)))
        for e in events:
            data = dict(e["data"])
            data["rev"] = e["rev"]
            changes.append((e["rev"], m.Change(type=e["type"], data=data)))
        changes.sort(key=lambda c: c[0])
        page = [c for _, c in changes[:SYNC_PAGE]]
        fit = fitting(page, self.page_bytes)
        has_more = len(changes) > SYNC_PAGE or fit < len(page)
        page = page[:fit]
        return m.SyncChatOut(
            chat_id=chat_id, rev=chat["rev"], changes=page, has_more=has_more, reset=False
        )

    # -- changes to existing messages ---------------------------------------------

    async def _locked_message(
        self, conn: asyncpg.Connection, message_id: int, user_id: int
    ) -> Any:
        row = await conn.fetchrow(
            """SELECT m.id, m.chat_id, m.user_id, m.deleted_at, c.status
                 FROM messages m
                 JOIN chats c ON c.id = m.chat_id AND c.deleted_at IS NULL
                 JOIN chat_participants p ON p.chat_id = m.chat_id
                      AND p.user_id = $2 AND p.left_at IS NULL
                WHERE m.id = $1""",
            message_id,
            user_id,
        )
        if row is None:
            raise NotFound("message not found")
        await conn.execute("SELECT 1 FROM chats WHERE id = $1 FOR UPDATE", row["chat_id"])
        return row

    async def edit(
        self, user_id: int, message_id: int, text: str, lang: str | None
    ) -> tuple[m.MessageOut, list[int]]:
        async with self.connection() as conn, conn.transaction():
            row = await self._locked_message(conn, message_id, user_id)
            if row["user_id"] != user_id:
                raise Forbidden("only the author may edit a message")
            if row["deleted_at"] is not None:
                raise Conflict("message is deleted")
            if row["status"] != "active":
                raise Conflict("chat is archived")
            rec = await conn.fetchrow(
                f"""WITH bump AS (
                        UPDATE chats SET rev = rev + 1, updated_at = now()
                         WHERE id = $1 RETURNING rev)
                    UPDATE messages m
                       SET content = jsonb_build_object(
                               COALESCE($3, (SELECT locale FROM users WHERE id = $4), $5), $2::text),
                           lang = COALESCE($3, (SELECT locale FROM users WHERE id = $4), $5),
                           rev = (SELECT rev FROM bump), edited_at = now()
                     WHERE m.id = $6
                 RETURNING {MSG_COLS}, {ATTACHMENTS_COL}""",
                row["chat_id"], text, lang, user_id, self.default_lang, message_id,
            )
            members = await self._members(conn, row["chat_id"])
        return message_out(rec), members

    async def delete(
        self, user_id: int, role: str, message_id: int
    ) -> tuple[m.DeleteOut, list[int], bool]:
        """Soft delete; returns (event data, members, changed)."""
        async with self.connection() as conn, conn.transaction():
            row = await self._locked_message(conn, message_id, user_id)
            if row["user_id"] != user_id and role != "manager":
                raise Forbidden("only the author or a manager may delete a message")
            if row["deleted_at"] is not None:
                rec = await conn.fetchrow(
                    "SELECT id, chat_id, rev, deleted_at FROM messages WHERE id = $1",
                    message_id,
                )
                changed = False
            else:
                rec = await conn.fetchrow(
                    """WITH bump AS (
                            UPDATE chats SET rev = rev + 1, updated_at = now()
                             WHERE id = $1 RETURNING rev)
                       UPDATE messages
                          SET content = '{}'::jsonb, deleted_at = now(),
                              rev = (SELECT rev FROM bump)
                        WHERE id = $2
                    RETURNING id, chat_id, rev, deleted_at""",
                    row["chat_id"], message_id,
                )
                changed = True
            members = await self._members(conn, row["chat_id"])
        out = m.DeleteOut(
            id=rec["id"], chat_id=rec["chat_id"], rev=rec["rev"], deleted_at=iso(rec["deleted_at"]) or ""
        )
        return out, members, changed

    async def read(
        self, user_id: int, chat_id: int, message_id: int
    ) -> tuple[m.ReadAck, list[int], bool]:
        """Moves the read horizon forward (never back); returns (ack, members, moved)."""
        async with self.connection() as conn:
            rec = await conn.fetchrow(
                """WITH target AS (
                        SELECT m.id, m.seq FROM messages m WHERE m.id = $3 AND m.chat_id = $1),
                   upd AS (
                        UPDATE chat_participants p
                           SET last_read_seq = t.seq, last_read_message_id = t.id,
                               last_read_at = now(),
                               delivered_seq = GREATEST(p.delivered_seq, t.seq)
                          FROM target t
                         WHERE p.chat_id = $1 AND p.user_id = $2 AND p.left_at IS NULL
                           AND p.last_read_seq < t.seq
                     RETURNING p.last_read_message_id, p.last_read_seq)
                   SELECT c.last_seq, c.deleted_at, p.left_at,
                          (SELECT id FROM target) AS target_id,
                          COALESCE((SELECT last_read_message_id FROM upd),
                                   p.last_read_message_id) AS last_read_message_id,
                          COALESCE((SELECT last_read_seq FROM upd), p.last_read_seq)
                              AS last_read_seq,
                          EXISTS (SELECT 1 FROM upd) AS moved,
                          (SELECT array_agg(user_id) FROM chat_participants
                            WHERE chat_id = $1 AND left_at IS NULL) AS members
                     FROM chats c
                     JOIN chat_participants p ON p.chat_id = c.id AND p.user_id = $2
                    WHERE c.id = $1""",
                chat_id, user_id, message_id,
            )
        if rec is None or rec["deleted_at"] is not None or rec["left_at"] is not None:
            raise NotFound("chat not found")
        if rec["target_id"] is None:
            raise NotFound("message not found")
        ack = m.ReadAck(
            chat_id=chat_id,
            last_read_message_id=rec["last_read_message_id"],
            unread=max(0, rec["last_seq"] - rec["last_read_seq"]),
        )
        return ack, list(rec["members"] or []), rec["moved"]

    async def mark_delivered(
        self, items: Sequence[tuple[int, int, int]]
    ) -> list[tuple[int, int, int, list[int]]]:
        """(chat, user, seq) delivered horizons; returns those that moved, with the
        message id at the horizon and the chat's members."""
        if not items:
            return []
        async with self.connection() as conn, conn.transaction():
            # The flush holds participant rows that a send moving its sender's read
            # horizon must wait for, until its commit returns: without waiting for the
            # WAL flush it returns at once. A crash can then lose the last flushes; the
            # horizons only lag (the next delivery moves them), nothing acked is lost.
            await conn.execute(KEYED_ONLY_LOCAL + "; SET LOCAL synchronous_commit = off")
            rows = await conn.fetch(
                _MARK_DELIVERED_SQL,
                [i[0] for i in items], [i[1] for i in items], [i[2] for i in items],
            )
        return [(r["chat_id"], r["user_id"], r["message_id"], list(r["members"] or [])) for r in rows]

    async def _members(self, conn: asyncpg.Connection, chat_id: int) -> list[int]:
        rows = await conn.fetch(
            "SELECT user_id FROM chat_participants WHERE chat_id = $1 AND left_at IS NULL",
            chat_id,
        )
        return [r["user_id"] for r in rows]

    # -- chats -------------------------------------------------------------------

    async def create_chat(
        self,
        *,
        group: str,
        type: str,
        name: str,
        users: Sequence[tuple[int, str]],
        order_id: int | None = None,
        verification_id: int | None = None,
        metadata: dict[str, Any] | None = None,
        created_by: int | None = None,
    ) -> dict[str, Any]:
        async with self.connection() as conn, conn.transaction():
            chat = await conn.fetchrow(
                """INSERT INTO chats (type, "group", name, order_id, verification_id,
                                      metadata, created_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   RETURNING *""",
                type, group, name, order_id, verification_id, metadata or {}, created_by,
            )
            await conn.executemany(
                """INSERT INTO chat_participants (chat_id, user_id, role) VALUES ($1, $2, $3)
                   ON CONFLICT (chat_id, user_id) DO UPDATE SET role = EXCLUDED.role,
                       left_at = NULL""",
                [(chat["id"], uid, role) for uid, role in users],
            )
        return chat_out(chat, [{"user_id": u, "role": r} for u, r in users])


def chat_out(row: Any, participants: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "type": row["type"],
        "group": row["group"],
        "name": row["name"],
        "status": row["status"],
        "order_id": row["order_id"],
        "verification_id": row["verification_id"],
        "metadata": row["metadata"],
        "last_message_id": row["last_message_id"],
        "last_seq": row["last_seq"],
        "rev": row["rev"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "deleted_at": iso(row["deleted_at"]),
    }
    if participants is not None:
        out["participants"] = participants
    return out
