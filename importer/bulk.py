"""`--bulk`: the indexes of `messages` built once at the end, not row by row.

A first import of years of history into a database that no node serves yet is the
case pg_restore is made for: rows COPYed into a table without its secondary indexes
and foreign keys, which are then built from the whole table in one sorted pass each,
cost a fraction of the same rows kept indexed one by one. So a bulk run:

1. takes the advisory lock every node holds shared for its life, exclusively, for
   the whole run: refused while any node runs, and no node starts meanwhile (a node
   behind pgbouncer holds no such lock, so connections named `beseda` are refused
   too);
2. drops the unique constraints, plain indexes and foreign keys of `messages` (the
   primary key stays: attachments, replies and chats point at it) and the foreign key
   and plain index of `message_attachments` (DEFERRED_TABLES), recording in
   `import_deferred`, in the same transaction, the statement that builds each again;
3. imports as usual (progress rows, resumable, idempotent);
4. builds everything back, each in a transaction that also deletes its row, then
   ANALYZEs `messages` (a later plain run that finds rows left in `import_deferred`
   builds them before its load and analyzes again after it).

While `import_deferred` has rows, nodes refuse to start (db.NodePresence)
and any later run of the importer, bulk or not, builds them before it writes. A kill
at any point therefore leaves either the old schema or rows that say what is missing.

What the dropped keys would have caught row by row, the builds catch at the end: a
`(chat_id, seq)` or `(chat_id, message_key)` seen twice. The importer's own
bookkeeping never writes such a pair (messages are de-duplicated by sid within a
conversation before they are planned, `seq` comes from the chats' counters), so a
failed build is a bug or a hand-edited database: the run stops with the failing
statement and its row stays. The key across chats, `external_id`, can meet a sid two
conversations of an export share: those later copies are taken out
(`drop_later_copies`), counted and listed as refused, and the build runs again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from wsserver.db import NODE_LOCK_ID

from .load import affected

log = logging.getLogger("beseda.importer")

NODE_APPLICATION = "beseda"
KIND_ORDER = {"unique": 0, "index": 1, "foreign_key": 2}

# What a bulk load leaves out, per table, and whether its unique keys go too. The
# unique keys of messages can: the importer never writes a duplicate there (messages
# are de-duplicated by sid before they are planned, `seq` comes from the counters).
# Those of message_attachments stay: a media sid that two messages of an export share
# is refused row by row, exactly as in a live-safe run, instead of failing the build.
DEFERRED_TABLES = (("messages", True), ("message_attachments", False))
# The one key of messages across chats. Sids are unique within a conversation once
# de-duplicated, but nothing rules out one sid in two conversations of an export; when
# its build finds such a pair, the later copies are taken out (drop_later_copies) and
# the build runs again, which ends where a live-safe run's row-by-row refusal ends.
# (Keeping this index live through the load instead cost 232 s against 125 for 5.1
# million messages: random sids into a btree larger than the buffers.)
EXTERNAL_KEY = "messages_external_idx"

# Foreign keys (and unique constraints, when $2) of table $1, and its indexes that back
# no constraint of it (unique ones only when $2); never the primary key.
_CATALOG_SQL = """
SELECT c.conname::text AS name,
       CASE c.contype WHEN 'u' THEN 'unique' ELSE 'foreign_key' END AS kind,
       format('ALTER TABLE %s ADD CONSTRAINT %I %s', c.conrelid::regclass, c.conname,
              pg_get_constraintdef(c.oid)) AS definition
  FROM pg_constraint c
 WHERE c.conrelid = $1::regclass AND (c.contype = 'f' OR (c.contype = 'u' AND $2))
UNION ALL
SELECT i.relname::text, 'index', pg_get_indexdef(i.oid)
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = $1::regclass AND NOT x.indisprimary AND (NOT x.indisunique OR $2)
   AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                    WHERE c.conrelid = x.indrelid AND c.conindid = x.indexrelid)
"""

_NODES_SQL = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND application_name = $1
"""


# The statement that analyzes every column of messages but the two JSON ones.
_ANALYZE_SQL = """
SELECT 'ANALYZE messages (' || string_agg(quote_ident(attname), ', ' ORDER BY attnum) || ')'
  FROM pg_attribute
 WHERE attrelid = 'messages'::regclass AND attnum > 0 AND NOT attisdropped
   AND attname NOT IN ('content', 'metadata')
"""


class NodesConnected(Exception):
    """a node is connected to the database, so its schema may not be taken apart"""


class RebuildFailed(Exception):
    """a deferred index or constraint could not be built again"""


async def nodes_connected(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(_NODES_SQL, NODE_APPLICATION))


async def pending(conn: asyncpg.Connection) -> list[str]:
    return [r["name"] for r in await conn.fetch("SELECT name FROM import_deferred ORDER BY name")]


async def claim(conn: asyncpg.Connection) -> None:
    """Takes the nodes' advisory lock exclusively for this session (the whole run):
    refused while any node holds it shared, and no node starts while it is held
    (wsserver.db.NodePresence). Connections of a node that holds no claim (one behind
    pgbouncer, or an older version) are refused by name too."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", NODE_LOCK_ID):
        raise NodesConnected("a running node holds its claim on this database")
    n = await nodes_connected(conn)
    if n:
        await conn.execute("SELECT pg_advisory_unlock($1)", NODE_LOCK_ID)
        raise NodesConnected(f"{n} connection(s) of a running node")


async def defer(conn: asyncpg.Connection) -> list[str]:
    """Drops what a bulk load need not maintain; returns the names dropped now.
    `claim` must have succeeded on this connection."""
    items: list[tuple[str, asyncpg.Record]] = []
    async with conn.transaction():
        await conn.execute("LOCK TABLE " + ", ".join(t for t, _ in DEFERRED_TABLES)
                           + " IN ACCESS EXCLUSIVE MODE")
        for table, with_unique in DEFERRED_TABLES:
            found = sorted(await conn.fetch(_CATALOG_SQL, table, with_unique),
                           key=lambda r: (-KIND_ORDER[r["kind"]], r["name"]))
            items += [(table, r) for r in found]
        for table, r in items:
            await conn.execute(
                "INSERT INTO import_deferred (name, kind, definition) VALUES ($1, $2, $3)",
                r["name"], r["kind"], r["definition"])
            ident = '"' + r["name"].replace('"', '""') + '"'
            if r["kind"] == "index":
                await conn.execute(f"DROP INDEX {ident}")
            else:
                await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {ident}")
    names = [r["name"] for _, r in items]
    if names:
        log.info("import.bulk_deferred count=%d names=%s", len(names), ",".join(names))
    return names


async def rebuild(conns: list[asyncpg.Connection],
                  removed: Removed | None = None) -> dict[str, float]:
    """Builds every deferred item again: unique keys and indexes side by side on the
    given connections, then the foreign keys; returns seconds per name. Messages taken
    out because another chat has their sid are added to `removed`."""
    if removed is None:
        removed = Removed()
    rows = await conns[0].fetch("SELECT name, kind, definition FROM import_deferred")
    if not rows:
        return {}
    rows = sorted(rows, key=lambda r: (KIND_ORDER[r["kind"]], r["name"]))
    took: dict[str, float] = {}

    async def build(conn: asyncpg.Connection, name: str, definition: str) -> None:
        t0 = time.perf_counter()
        for attempt in (1, 2):
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
                    await conn.execute(definition)
                    await conn.execute("DELETE FROM import_deferred WHERE name = $1", name)
                break
            except asyncpg.UniqueViolationError as exc:
                if name != EXTERNAL_KEY or attempt == 2:
                    raise RebuildFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
                n = await drop_later_copies(conn, removed)
                log.warning("import.bulk_shared_sids removed=%d", n)
            except asyncpg.PostgresError as exc:  # a unique key's message names the key
                raise RebuildFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
        took[name] = round(time.perf_counter() - t0, 3)
        log.info("import.bulk_rebuilt name=%s seconds=%.2f", name, took[name])

    todo = [r for r in rows if r["kind"] != "foreign_key"]

    async def worker(conn: asyncpg.Connection) -> None:
        while todo:
            r = todo.pop(0)
            await build(conn, r["name"], r["definition"])

    await asyncio.gather(*(worker(c) for c in conns))
    for r in rows:
        if r["kind"] == "foreign_key":
            await build(conns[0], r["name"], r["definition"])
    await analyze(conns[0])
    return took


class Removed:
    """What drop_later_copies took out: the messages (id, chat_id, external_id,
    conversation), and how many attachments and reply links went with them."""

    def __init__(self) -> None:
        self.messages: list[asyncpg.Record] = []
        self.attachments = 0
        self.replies_unlinked = 0


async def drop_later_copies(conn: asyncpg.Connection, removed: Removed) -> int:
    """Takes out every message whose sid an earlier message (by id) of another chat has,
    with what points at it, as the row-by-row insert of a live-safe run refuses it:
    its attachments and queue entry go, replies to it and read horizons on it lose the
    link, a chat whose last message it was gets the one before. Its seq stays unused,
    as a refused row's does. Adds them to `removed`; returns how many."""
    async with conn.transaction():
        gone = await conn.fetch(
            """SELECT m.id, m.chat_id, m.external_id, c.external_id AS conversation FROM (
                   SELECT id, chat_id, external_id, row_number() OVER (
                       PARTITION BY external_id ORDER BY id) AS n
                     FROM messages WHERE external_id IS NOT NULL) m
               JOIN chats c ON c.id = m.chat_id
              WHERE m.n > 1 ORDER BY m.id""")
        ids = [r["id"] for r in gone]
        removed.replies_unlinked += affected(await conn.execute(
            "UPDATE messages SET reply_to_id = NULL WHERE reply_to_id = ANY($1::bigint[])",
            ids))
        removed.attachments += affected(await conn.execute(
            "DELETE FROM message_attachments WHERE message_id = ANY($1::bigint[])", ids))
        await conn.execute("DELETE FROM message_grams_queue WHERE message_id = ANY($1::bigint[])",
                           ids)
        await conn.execute("DELETE FROM messages WHERE id = ANY($1::bigint[])", ids)
        await conn.execute(
            """UPDATE chat_participants p SET last_read_message_id = (
                   SELECT m.id FROM messages m WHERE m.chat_id = p.chat_id
                      AND m.seq <= p.last_read_seq ORDER BY m.seq DESC LIMIT 1)
                WHERE p.last_read_message_id = ANY($1::bigint[])""", ids)
        await conn.execute(
            """UPDATE chats c SET last_message_id = m.id, last_message_at = m.created_at
                 FROM (SELECT DISTINCT ON (chat_id) chat_id, id, created_at FROM messages
                        WHERE chat_id = ANY($2::bigint[]) ORDER BY chat_id, seq DESC) m
                WHERE c.id = m.chat_id AND c.last_message_id = ANY($1::bigint[])""",
            ids, list({r["chat_id"] for r in gone}))
        await conn.execute(
            """UPDATE chats SET last_message_id = NULL, last_message_at = NULL
                WHERE last_message_id = ANY($1::bigint[])""", ids)
    removed.messages += gone
    return len(gone)


async def analyze(conn: asyncpg.Connection) -> None:
    """Statistics for the columns queries filter, join and sort on: the table has just
    grown from nothing, and a plan made from no statistics can be badly wrong. The two
    JSON columns (a third of the cost) are left to autovacuum's next analyze."""
    await conn.execute(await conn.fetchval(_ANALYZE_SQL))
