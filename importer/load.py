"""Writing plans into PostgreSQL: COPY in bounded transactions, live-server safe.

Each transaction carries up to `batch_messages` messages (a big conversation is
split across several, always in index order) and, for every conversation whose
last messages it carries, the read horizons and the `import_conversations` row.
So a kill at any point leaves whole transactions behind, and the next run:
- skips conversations that have a progress row with the same signature;
- for any other conversation finds the chat by `external_id`, loads the sids
  already imported, and appends only the rest.

Positions come from the same counters the live server uses: the chat rows are
locked in id order and `last_seq`/`rev` advanced by the batch's count, so a
message sent over the socket during or after the import lands after it.
The import writes no chat_events and publishes nothing: it is silent.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from .export import ConversationPlan, MessagePlan, dumps
from .report import plan_stats
from .rows import MSG_COPY_COLUMNS, NULL, needs_escape, text
from .storage import LocalStorage, StorageError

log = logging.getLogger("beseda.importer")

MSG_COLUMNS = ("id", "chat_id", "seq", "rev", "created_rev", "user_id", "type", "content",
               "lang", "metadata", "message_key", "created_at", "edited_at", "external_id",
               "reply_to_id")
REPLY_COL = MSG_COLUMNS.index("reply_to_id")
ATT_COLUMNS = ("message_id", "uploader_id", "type", "mime_type", "size", "name",
               "storage_key", "status", "metadata", "created_at", "external_id")
IMPORT_LOCK_ID = 0x6265_7365_6469  # one importer at a time per database


class Imported(msgspec.Struct, gc=False):
    """A message of the chat in the database: what horizons and replies need."""

    index: int
    id: int
    seq: int
    created_at: datetime


@dataclass
class ChatState:
    plan: ConversationPlan
    chat_id: int = 0
    existing: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    imported: list[Imported] = field(default_factory=list)
    by_index: dict[int, int] = field(default_factory=dict)  # Twilio index -> message id
    taken: set[str] = field(default_factory=set)  # sids another chat already has


@dataclass(slots=True)
class WorkItem:
    state: ChatState
    start: int
    end: int
    first: bool
    last: bool


def _rejected(st: ChatState, kind: str, sid: str, why: str, message_sid: str = "") -> None:
    """A row the row-by-row fallback could not insert: logged with its sid, and listed
    in the report's issues with its conversation's other findings."""
    log.warning("import.%s sid=%s error=%s", kind, sid, why)
    issue = {"kind": kind, "conversation": st.plan.sid, "sid": sid, "reason": why}
    if message_sid:
        issue["message_sid"] = message_sid
    st.plan.issues.append(issue)


def affected(status: str) -> int:
    """The row count of a command tag asyncpg returns ("UPDATE 3" -> 3)."""
    return int(status.rsplit(" ", 1)[-1])


class ImportBusy(Exception):
    """another importer holds the lock on this database"""


class Loader:
    def __init__(self, conn: asyncpg.Connection, storage: LocalStorage, export_id: str,
                 run_id: int, batch_messages: int, on_commit: Any = None,
                 batch_bytes: int = 16 * 2**20) -> None:
        self.conn = conn
        self.storage = storage
        self.export_id = export_id
        self.run_id = run_id
        self.batch_messages = max(1, batch_messages)
        self.on_commit = on_commit
        self.batch: list[WorkItem] = []
        self.batch_count = 0
        self.batch_bytes = 0
        self.batch_bytes_max = batch_bytes
        self.seq_name = ""
        self.run: dict[str, int] = {k: 0 for k in (
            "conversations_imported", "chats_created", "chats_existing",
            "participants_inserted", "messages_inserted", "messages_already_present",
            "messages_updated", "messages_rejected", "attachments_inserted",
            "attachments_rejected", "media_files_copied", "media_copy_failed",
            "read_horizons_set", "messages_appended_out_of_index_order", "replies_linked",
            "replies_unlinked", "transactions")}
        self.phase_s: Counter[str] = Counter()

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_s[phase] += time.perf_counter() - t0

    async def prepare(self) -> None:
        self.seq_name = await self.conn.fetchval(
            "SELECT pg_get_serial_sequence('messages', 'id')")

    # ---- batching ------------------------------------------------------------
    async def add(self, plan: ConversationPlan) -> None:
        """Queue a conversation; full batches are written as they fill up."""
        state = ChatState(plan)
        msgs = plan.messages
        n = len(msgs)
        if n and self.batch_count + n <= self.batch_messages:
            # the common case: the whole conversation fits in the batch (then the loop
            # below would take every message too)
            total = sum([len(m.content) + len(m.metadata) for m in msgs])
            if self.batch_bytes + total < self.batch_bytes_max:
                self.batch.append(WorkItem(state, 0, n, True, True))
                self.batch_count += n
                self.batch_bytes += total
                if (self.batch_count >= self.batch_messages or len(self.batch) >= 500
                        or self.batch_bytes >= self.batch_bytes_max):
                    await self.flush()
                return
        pos = 0
        first = True
        while True:
            take = nbytes = 0
            while (pos + take < n and self.batch_count + take < self.batch_messages
                   and (self.batch_bytes + nbytes < self.batch_bytes_max
                        or self.batch_count + take == 0)):
                m = msgs[pos + take]
                nbytes += len(m.content) + len(m.metadata)
                take += 1
            if take == 0 and pos < n:
                await self.flush()
                continue
            end = pos + take
            self.batch.append(WorkItem(state, pos, end, first, end == n))
            first = False
            self.batch_count += take
            self.batch_bytes += nbytes
            pos = end
            if (self.batch_count >= self.batch_messages or len(self.batch) >= 500
                    or self.batch_bytes >= self.batch_bytes_max):
                await self.flush()
            if pos >= n:
                break

    async def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch, self.batch_count, self.batch_bytes = self.batch, [], 0, 0
        done_msgs = sum(w.end - w.start for w in batch)
        done_convs = sum(1 for w in batch if w.last)
        tx = self.conn.transaction()
        await tx.start()
        try:
            await self._write(batch)
        except BaseException:
            await tx.rollback()
            raise
        with self._timed("commit"):
            await tx.commit()
        self.run["transactions"] += 1
        if self.on_commit is not None:
            self.on_commit(done_convs, done_msgs)

    # ---- one transaction -----------------------------------------------------------
    async def _write(self, batch: list[WorkItem]) -> None:
        firsts = [w.state for w in batch if w.first]
        if firsts:
            with self._timed("chats_and_participants"):
                await self._ensure_chats(firsts)

        # messages that are new, and existing ones that this export has a newer copy of
        new: list[tuple[WorkItem, list[MessagePlan]]] = []
        updates: list[tuple[ChatState, int, MessagePlan]] = []
        for w in batch:
            st = w.state
            if not st.existing and not st.taken:  # a new chat, or nothing of it imported yet
                if w.end > w.start:
                    new.append((w, st.plan.messages[w.start:w.end]))
                continue
            fresh = []
            for m in st.plan.messages[w.start:w.end]:
                have = st.existing.get(m.sid)
                if have is None and m.sid in st.taken:
                    self.run["messages_rejected"] += 1
                    _rejected(st, "message_rejected", m.sid, "sid of another chat")
                elif have is None:
                    fresh.append(m)
                else:
                    self.run["messages_already_present"] += 1
                    if m.updated_at > have[1]:
                        updates.append((st, have[0], m))
            if fresh:
                new.append((w, fresh))
        if new or updates:
            await self._insert_messages(new, updates)

        lasts = [w.state for w in batch if w.last]
        if lasts:
            with self._timed("horizons_and_progress"):
                await self._finish_conversations(lasts)

    async def _ensure_chats(self, states: list[ChatState]) -> None:
        plans = [s.plan for s in states]
        owner = [next((p.user_id for p in pl.participants if p.role == "owner"), None)
                 for pl in plans]
        rows = await self.conn.fetch(
            """INSERT INTO chats (type, "group", name, status, order_id, metadata,
                                  created_by, created_at, updated_at, external_id)
               SELECT t, g, n, s, o, m::jsonb, cb, ca, ua, x
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                           $6::text[], $7::bigint[], $8::timestamptz[], $9::timestamptz[],
                           $10::text[]) AS v(t, g, n, s, o, m, cb, ca, ua, x)
               ON CONFLICT (external_id) DO NOTHING
               RETURNING id, external_id""",
            [p.type for p in plans], [p.group for p in plans], [p.name for p in plans],
            [p.status for p in plans], [p.order_id for p in plans],
            [p.metadata for p in plans], owner, [p.created_at for p in plans],
            [p.updated_at for p in plans], [p.sid for p in plans])
        by_sid = {s.plan.sid: s for s in states}
        for r in rows:
            by_sid[r["external_id"]].chat_id = r["id"]
        self.run["chats_created"] += len(rows)
        missing = [s.plan.sid for s in states if not s.chat_id]
        if missing:
            self.run["chats_existing"] += len(missing)
            for r in await self.conn.fetch(
                    "SELECT id, external_id FROM chats WHERE external_id = ANY($1::text[])",
                    missing):
                by_sid[r["external_id"]].chat_id = r["id"]
            by_chat = {by_sid[sid].chat_id: by_sid[sid] for sid in missing}
            for r in await self.conn.fetch(
                    """SELECT chat_id, message_key, id, seq, created_at,
                              COALESCE(edited_at, created_at) AS upd,
                              (metadata #>> '{twilio,index}')::bigint AS idx
                       FROM messages
                       WHERE chat_id = ANY($1::bigint[]) AND external_id IS NOT NULL""",
                    list(by_chat)):
                st = by_chat[r["chat_id"]]
                st.existing[r["message_key"]] = (r["id"], r["upd"])
                idx = r["idx"] if r["idx"] is not None else -1
                st.imported.append(Imported(idx, r["id"], r["seq"], r["created_at"]))
                if idx >= 0:
                    st.by_index.setdefault(idx, r["id"])
            # A chat read again (a resumed or forced re-run, a later export): sids that
            # another chat already has are refused here, before they are given a seq,
            # so a refused message does not move the chat's counters on every run.
            wanted = [m.sid for st in by_chat.values() for m in st.plan.messages
                      if m.sid not in st.existing]
            if wanted:
                taken = {r["external_id"] for r in await self.conn.fetch(
                    "SELECT external_id FROM messages WHERE external_id = ANY($1::text[])",
                    wanted)}
                for st in by_chat.values():
                    st.taken = {m.sid for m in st.plan.messages if m.sid in taken}

        cids, uids, roles, joined = [], [], [], []
        for s in states:
            for p in s.plan.participants:
                cids.append(s.chat_id)
                uids.append(p.user_id)
                roles.append(p.role)
                joined.append(p.joined_at)
        if cids:
            status = await self.conn.execute(
                """INSERT INTO chat_participants (chat_id, user_id, role, joined_at)
                   SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[],
                                        $4::timestamptz[])
                   ON CONFLICT DO NOTHING""", cids, uids, roles, joined)
            self.run["participants_inserted"] += affected(status)

    async def _insert_messages(self, new: list[tuple[WorkItem, list[MessagePlan]]],
                               updates: list[tuple[ChatState, int, MessagePlan]]) -> None:
        n_new = sum(len(f) for _, f in new)
        ids: list[int] = []
        if n_new:
            ids = await self.conn.fetchval(
                "SELECT array_agg(nextval($1::regclass)) FROM generate_series(1, $2)",
                self.seq_name, n_new)
        # per chat: how many positions and revisions, and the new last message
        per_chat: dict[int, list[Any]] = {}
        pos = 0
        for w, fresh in new:
            cid = w.state.chat_id
            per_chat[cid] = [len(fresh), len(fresh), ids[pos + len(fresh) - 1],
                             fresh[-1].created_at]
            pos += len(fresh)
        for st, _mid, _m in updates:
            entry = per_chat.setdefault(st.chat_id, [0, 0, None, None])
            entry[1] += 1
        chat_ids = sorted(per_chat)
        await self.conn.execute(
            "SELECT 1 FROM chats WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
            chat_ids)
        rows = await self.conn.fetch(
            """UPDATE chats c SET
                   last_seq = c.last_seq + v.n,
                   rev = c.rev + v.r,
                   last_message_id = COALESCE(v.mid, c.last_message_id),
                   last_message_at = CASE WHEN v.mid IS NULL THEN c.last_message_at
                                          ELSE v.at END,
                   updated_at = GREATEST(c.updated_at, COALESCE(v.at, c.updated_at))
               FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                           $5::timestamptz[]) AS v(id, n, r, mid, at)
               WHERE c.id = v.id
               RETURNING c.id, c.last_seq, c.rev""",
            chat_ids, [per_chat[c][0] for c in chat_ids], [per_chat[c][1] for c in chat_ids],
            [per_chat[c][2] for c in chat_ids], [per_chat[c][3] for c in chat_ids])
        base = {r["id"]: (r["last_seq"] - per_chat[r["id"]][0] + 1,
                          r["rev"] - per_chat[r["id"]][1] + 1) for r in rows}

        # one COPY text line a message (rows.MSG_COPY_COLUMNS), as bytes: the columns
        # up to edited_at formatted, then the two JSON columns as msgspec made them
        parts: list[bytes] = []
        add = parts.append
        chunks: list[tuple[ChatState, list[Imported]]] = []
        atts: list[tuple[Any, ...]] = []
        owners: dict[int, tuple[ChatState, str]] = {}  # message id -> its chat, its sid
        replies: list[tuple[int, int | None]] = []  # (message id, target id)
        pos = 0
        out_of_order = 0
        for w, fresh in new:
            st = w.state
            cid = st.chat_id
            seq, rev = base[cid]
            top = max((x.index for x in st.imported), default=-1)
            by_index = st.by_index
            imps: list[Imported] = []
            chunks.append((st, imps))
            for m in fresh:
                index = m.index
                if index < top:
                    out_of_order += 1
                mid = ids[pos]
                pos += 1
                # the target has a smaller index (export.plan drops the rest), so it was
                # given its id earlier in this loop, in an earlier batch or an earlier run
                if m.reply_to_index is not None:
                    reply = by_index.get(m.reply_to_index)
                    replies.append((mid, reply))
                    head = f"{mid}\t{cid}\t{seq}\t{rev}\t{rev}\t{NULL if reply is None else reply}"
                else:
                    head = f"{mid}\t{cid}\t{seq}\t{rev}\t{rev}\t\\N"
                if index not in by_index:
                    by_index[index] = mid
                sid = m.sid
                if needs_escape(sid) is not None:
                    sid = text(sid)
                content = m.content
                if b"\\" in content:
                    content = content.replace(b"\\", b"\\\\")
                meta = m.metadata
                if b"\\" in meta:
                    meta = meta.replace(b"\\", b"\\\\")
                uid = m.user_id
                lang = m.lang
                add(f"{head}\t{NULL if uid is None else uid}\t{m.type}\t"
                    f"{NULL if lang is None else text(lang)}\t{sid}\t{sid}\t"
                    f"{m.created_txt}\t{m.edited_txt}\t".encode())
                add(content)
                add(b"\t")
                add(meta)
                add(b"\n")
                if m.media:
                    owners[mid] = (st, m.sid)
                    for item in m.media:
                        atts.append(self._attachment(mid, m, item))
                imps.append(Imported(index, mid, seq, m.created_at))
                seq += 1
                rev += 1
            base[cid] = (seq, rev)
        self.run["messages_appended_out_of_index_order"] += out_of_order

        with self._timed("copy_messages"):
            rejected = await self._copy_messages(parts, new, ids, base) if parts else set()
        del parts
        for st, imps in chunks:
            if not rejected:
                st.imported.extend(imps)
                continue
            for imp in imps:
                if imp.id not in rejected:
                    st.imported.append(imp)
                elif st.by_index.get(imp.index) == imp.id:
                    del st.by_index[imp.index]
        for mid, target in replies:
            if mid in rejected:
                continue
            if target is None or target in rejected:
                self.run["replies_unlinked"] += 1
            else:
                self.run["replies_linked"] += 1
        if rejected:
            atts = [a for a in atts if a[0] not in rejected]
            await self._repair_last_message(chat_ids)
        if atts:
            with self._timed("copy_attachments"):
                await self._copy_attachments(atts, owners)
        if updates:
            await self._update_messages(updates, base)

    def _attachment(self, mid: int, m: MessagePlan, item: Any) -> tuple[Any, ...]:
        key = None
        status = "missing"
        if item.source is not None:
            key = f"twilio/{item.sid[-2:]}/{item.sid}"
            try:
                self.storage.put(key, item.source)
                status = "stored"
                self.run["media_files_copied"] += 1
            except (OSError, StorageError) as exc:
                log.warning("import.media_copy_failed sid=%s error=%s", item.sid, exc)
                self.run["media_copy_failed"] += 1
                key = None
        return (mid, m.user_id, item.att_type, item.content_type, item.size, item.filename,
                key, status, item.metadata, m.created_at, item.sid or None)

    async def _copy_messages(self, parts: list[bytes],
                             new: list[tuple[WorkItem, list[MessagePlan]]], ids: list[int],
                             after: dict[int, tuple[int, int]]) -> set[int]:
        """COPY the batch's new messages (the lines' `parts`, in the order of `new` and
        `ids`); if that fails, insert them one by one and return the ids rejected."""
        try:
            data = b"".join(parts)
            async with self.conn.transaction():
                await self.conn.copy_to_table(
                    "messages", source=memoryview(data), columns=MSG_COPY_COLUMNS,
                    format="text")
                del data
                # For the nodes' search indexers (sql/0017): searchable once indexed.
                await self.conn.copy_to_table(
                    "message_grams_queue",
                    source=memoryview("\n".join(map(str, ids)).encode("ascii") + b"\n"),
                    columns=("message_id",), format="text")
            self.run["messages_inserted"] += len(ids)
            return set()
        except (asyncpg.PostgresError, ValueError, TypeError) as exc:
            log.warning("import.copy_failed table=messages rows=%d error=%s; row by row",
                        len(ids), type(exc).__name__)
        # the rows again, as parameters: positions from the chats' counters after the
        # batch (`after`) counted back, reply targets from the chats' index maps
        records: list[tuple[Any, ...]] = []
        chats: list[ChatState] = []
        pos = 0
        for w, fresh in new:
            st = w.state
            seq, rev = after[st.chat_id]
            seq -= len(fresh)
            rev -= len(fresh)
            for m in fresh:
                reply = (st.by_index.get(m.reply_to_index)
                         if m.reply_to_index is not None else None)
                records.append((ids[pos], st.chat_id, seq, rev, rev, m.user_id, m.type,
                                m.content.decode(), m.lang, m.metadata.decode(), m.sid,
                                m.created_at,
                                m.edited_at, m.sid, reply))
                chats.append(st)
                pos += 1
                seq += 1
                rev += 1
        rejected: set[int] = set()
        cols = ", ".join(MSG_COLUMNS)
        params = ", ".join(f"${i + 1}" for i in range(len(MSG_COLUMNS)))
        sql = (f"WITH ins AS (INSERT INTO messages ({cols}) VALUES ({params}) "
               "ON CONFLICT DO NOTHING RETURNING id), "
               "queued AS (INSERT INTO message_grams_queue (message_id) SELECT id FROM ins) "
               "SELECT id FROM ins")
        for rec, st in zip(records, chats, strict=True):
            if rec[REPLY_COL] in rejected:  # its target was rejected just before
                rec = (*rec[:REPLY_COL], None, *rec[REPLY_COL + 1:])
            try:
                async with self.conn.transaction():
                    got = await self.conn.fetchval(sql, *rec)
                why = "duplicate key"  # when nothing was inserted
            except (asyncpg.PostgresError, ValueError, TypeError) as exc:
                got, why = None, type(exc).__name__
            if got is None:
                rejected.add(rec[0])
                self.run["messages_rejected"] += 1
                _rejected(st, "message_rejected", rec[10], why)
            else:
                self.run["messages_inserted"] += 1
        return rejected

    async def _copy_attachments(self, atts: list[tuple[Any, ...]],
                                owners: dict[int, tuple[ChatState, str]]) -> None:
        try:
            async with self.conn.transaction():
                await self.conn.copy_records_to_table(
                    "message_attachments", records=atts, columns=ATT_COLUMNS)
            self.run["attachments_inserted"] += len(atts)
            return
        except (asyncpg.PostgresError, ValueError, TypeError) as exc:
            log.warning("import.copy_failed table=message_attachments rows=%d error=%s",
                        len(atts), type(exc).__name__)
        cols = ", ".join(ATT_COLUMNS)
        params = ", ".join(f"${i + 1}" for i in range(len(ATT_COLUMNS)))
        sql = (f"INSERT INTO message_attachments ({cols}) VALUES ({params}) "
               "ON CONFLICT (external_id) WHERE external_id IS NOT NULL DO NOTHING RETURNING id")
        for rec in atts:
            try:
                async with self.conn.transaction():
                    got = await self.conn.fetchval(sql, *rec)
                why = "duplicate key"
            except (asyncpg.PostgresError, ValueError, TypeError) as exc:
                got, why = None, type(exc).__name__
            if got is None:
                self.run["attachments_rejected"] += 1
                st, msg_sid = owners[rec[0]]
                _rejected(st, "attachment_rejected", rec[10] or "", why, msg_sid)
            else:
                self.run["attachments_inserted"] += 1

    async def _repair_last_message(self, chat_ids: list[int]) -> None:
        await self.conn.execute(
            """UPDATE chats c SET last_message_id = m.id, last_message_at = m.created_at
               FROM (SELECT DISTINCT ON (chat_id) chat_id, id, created_at FROM messages
                     WHERE chat_id = ANY($1::bigint[]) ORDER BY chat_id, seq DESC) m
               WHERE c.id = m.chat_id""", chat_ids)
        await self.conn.execute(
            """UPDATE chats SET last_message_id = NULL, last_message_at = NULL
               WHERE id = ANY($1::bigint[])
                 AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.chat_id = chats.id)""",
            chat_ids)

    async def _update_messages(self, updates: list[tuple[ChatState, int, MessagePlan]],
                               base: dict[int, tuple[int, int]]) -> None:
        ids, contents, langs, metas, edited, revs = [], [], [], [], [], []
        for st, mid, m in updates:
            _seq, rev = base[st.chat_id]
            base[st.chat_id] = (_seq, rev + 1)
            ids.append(mid)
            contents.append(m.content.decode())
            langs.append(m.lang)
            metas.append(m.metadata.decode())
            edited.append(m.edited_at)
            revs.append(rev)
            st.existing[m.sid] = (mid, m.updated_at)
        await self.conn.execute(
            """UPDATE messages m SET content = v.c::jsonb, lang = v.l, metadata = v.md::jsonb,
                                     edited_at = v.e, rev = v.r
               FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                           $5::timestamptz[], $6::bigint[]) AS v(id, c, l, md, e, r)
               WHERE m.id = v.id""", ids, contents, langs, metas, edited, revs)
        self.run["messages_updated"] += len(ids)

    async def _finish_conversations(self, states: list[ChatState]) -> None:
        cids, uids, mids, seqs, ats, dseqs, dats = [], [], [], [], [], [], []
        for s in states:
            if not s.imported:
                continue
            imp = sorted(s.imported, key=lambda x: (x.index, x.seq))
            keys = [x.index for x in imp]
            last = max(imp, key=lambda x: x.seq)
            for p in s.plan.participants:
                if p.horizon_index is None:
                    target: Imported | None = last
                    at = p.last_read_at or last.created_at
                else:
                    k = bisect.bisect_right(keys, p.horizon_index) - 1
                    target = imp[k] if k >= 0 else None
                    at = p.last_read_at
                cids.append(s.chat_id)
                uids.append(p.user_id)
                mids.append(target.id if target else None)
                seqs.append(target.seq if target else 0)
                ats.append(at if target else None)
                dseqs.append(last.seq)
                dats.append(last.created_at)
        if cids:
            status = await self.conn.execute(
                """UPDATE chat_participants p SET
                       last_read_message_id = CASE WHEN v.seq > p.last_read_seq THEN v.mid
                                                   ELSE p.last_read_message_id END,
                       last_read_at = CASE WHEN v.seq > p.last_read_seq THEN v.at
                                           ELSE p.last_read_at END,
                       last_read_seq = GREATEST(p.last_read_seq, v.seq),
                       delivered_at = CASE WHEN v.dseq > p.delivered_seq THEN v.dat
                                           ELSE p.delivered_at END,
                       delivered_seq = GREATEST(p.delivered_seq, v.dseq)
                   FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],
                               $5::timestamptz[], $6::bigint[], $7::timestamptz[])
                        AS v(chat_id, user_id, mid, seq, at, dseq, dat)
                   WHERE p.chat_id = v.chat_id AND p.user_id = v.user_id
                     AND (v.seq > p.last_read_seq OR v.dseq > p.delivered_seq)""",
                cids, uids, mids, seqs, ats, dseqs, dats)
            self.run["read_horizons_set"] += affected(status)
        await self.conn.execute(
            """INSERT INTO import_conversations
                   (export_id, conversation_sid, signature, chat_id, run_id, stats)
               SELECT $1, sid, sig, cid, $2, st::jsonb
               FROM unnest($3::text[], $4::text[], $5::bigint[], $6::text[])
                    AS v(sid, sig, cid, st)
               ON CONFLICT (export_id, conversation_sid) DO UPDATE SET
                   signature = EXCLUDED.signature, chat_id = EXCLUDED.chat_id,
                   run_id = EXCLUDED.run_id, stats = EXCLUDED.stats, done_at = now()""",
            self.export_id, self.run_id, [s.plan.sid for s in states],
            [s.plan.signature for s in states], [s.chat_id for s in states],
            [dumps(plan_stats(s.plan)) for s in states])
        self.run["conversations_imported"] += len(states)

