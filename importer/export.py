"""Reading a Twilio Conversations export: pages in, per-conversation plans out.

Nothing here touches the database. `Export.conversations()` streams one
`ConversationPlan` at a time (one conversation's participants and de-duplicated
messages, already mapped to our column values), so memory stays bounded by the
largest conversation, not by the export.

Bad data never raises: every oddity lands in the plan's `stats` counter (names
follow EXPECTED.md where it has one) and, where a list helps, in `issues`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import msgspec

from .lang import detect
from .rows import NULL, ts

log = logging.getLogger("beseda.importer")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_TEXT_BYTES = 32 * 1024
_PAGE_NAME = re.compile(r"^page-(\d+)\.json$")


def _has_nul_escape(data: bytes) -> bool:
    """Whether JSON text escapes a real U+0000: `\u0000` whose backslash no other
    backslash escapes (the text "\u0000" is written with two, and does not count).
    bytes.find, not a regex: a pattern that starts with a look-behind is tried at
    every byte of the page, which cost more than the whole import of it."""
    i = data.find(b"\\u0000")
    while i >= 0:
        j = i
        while j and data[j - 1] == 0x5C:  # the backslashes just before this one
            j -= 1
        if (i - j) % 2 == 0:
            return True
        i = data.find(b"\\u0000", i + 1)
    return False
_SAFE_SID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ORDER_UNIQUE = re.compile(r"^order-(\d+)(-fulfillment)?$")
_GROUP_WORD = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
USER_ROLES = ("buyer", "client", "manager", "service")
MAX_ID = 2**63 - 1  # ids are bigint


def _id(text: str | None) -> int:
    """A positive bigint id from CSV text; ValueError otherwise."""
    text = (text or "").strip()
    if not (text.isascii() and text.isdigit()):  # int() would take "1_0", "+7", "٣"
        raise ValueError("not a decimal id")
    value = int(text)
    if not 1 <= value <= MAX_ID:
        raise ValueError("id out of range")
    return value


class MessageRec(msgspec.Struct, kw_only=True):
    """One Twilio Message as the fast path decodes it; unknown fields are ignored."""

    sid: str
    # a position: 0 or more, and within bigint (a page with any other value takes the
    # lenient path, which counts and lists that record as invalid)
    index: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
    author: str | None = None
    body: str | None = None
    media: Any = None
    attributes: Any = None
    participant_sid: str | None = None
    # The timestamps as written; _with_dates sets the datetimes from them (and keeps
    # the text, for the COPY, only in the canonical shape). The datetime fields are
    # always overwritten there: their JSON names are not Twilio's, and typed Any so
    # that a page that did carry them decodes as before.
    created_raw: str | None = msgspec.field(default=None, name="date_created")
    updated_raw: str | None = msgspec.field(default=None, name="date_updated")
    date_created: Any = msgspec.field(default=None, name="beseda:date_created")
    date_updated: Any = msgspec.field(default=None, name="beseda:date_updated")
    delivery: Any = None
    content_sid: str | None = None
    # Deprecated single-media shape (Programmable Chat era), snake and camel case.
    media_sid: str | None = None
    media_content_type: str | None = None
    media_filename: str | None = None
    media_size: int | None = None
    mediaSid: str | None = None
    mediaContentType: str | None = None
    mediaFilename: str | None = None
    mediaSize: int | None = None


class MessagePage(msgspec.Struct):
    messages: list[MessageRec]


_msg_page_decoder = msgspec.json.Decoder(MessagePage)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_from_iso = datetime.fromisoformat


def _canonical_ts(s: str) -> bool:
    """`YYYY-MM-DDTHH:MM:SSZ` in ASCII: the shape Twilio writes. For it
    datetime.fromisoformat gives what msgspec's datetime decoding gives."""
    return (len(s) == 20 and s[19] == "Z" and s[10] == "T" and s[4] == "-"
            and s[13] == ":" and s.isascii())


def _timestamp(text: str) -> tuple[datetime, bool]:
    """The instant a timestamp names, and whether its text can go into the COPY as it
    is (the canonical shape only). A timestamp msgspec would refuse raises
    msgspec.DecodeError, as decoding the page into datetimes did."""
    if _canonical_ts(text):
        try:
            return _from_iso(text), True
        except ValueError:
            pass
    return msgspec.convert(text, datetime), False


def _with_dates(recs: list[MessageRec]) -> list[MessageRec]:
    """Fill date_created/date_updated of freshly decoded records from their text; the
    text stays (for the COPY) only in the canonical shape, which PostgreSQL reads as
    the same instant."""
    for r in recs:
        r.date_created = r.date_updated = None
        if r.created_raw is not None:
            r.date_created, keep = _timestamp(r.created_raw)
            if not keep:
                r.created_raw = None
        if r.updated_raw is not None:
            r.date_updated, keep = _timestamp(r.updated_raw)
            if not keep:
                r.updated_raw = None
    return recs


def dumps(value: Any) -> str:
    return _encoder.encode(value).decode("utf-8")


# ---------------------------------------------------------------------------------
# small cleaning helpers


def no_nul(s: str) -> str:
    """PostgreSQL text/jsonb cannot hold U+0000: it becomes U+FFFD."""
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


def _fix_str(s: str) -> str:
    return _fix_surrogates(no_nul(s))


def _fix_surrogates(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from a \ud800-style escape
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return s


def clean(value: Any) -> Any:
    """Deep copy of decoded JSON with every string made storable in PostgreSQL."""
    return _clean_counted(value)[0]


def _clean_counted(value: Any) -> tuple[Any, bool]:
    """`clean(value)`, and whether it changed anything."""
    if isinstance(value, str):
        fixed = _fix_str(value)
        return fixed, fixed != value
    if isinstance(value, dict):
        out, changed = {}, False
        for k, v in value.items():
            k2, c1 = _clean_counted(str(k))
            out[k2], c2 = _clean_counted(v)
            changed = changed or c1 or c2
        return out, changed
    if isinstance(value, list):
        items = [_clean_counted(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False


def parse_attributes(raw: Any) -> tuple[bool, Any]:
    """(ok, value): the parsed attributes, or (False, raw string) when it is not JSON."""
    if raw is None or raw == "{}":
        return True, {}
    if not isinstance(raw, str):
        return True, clean(raw)
    try:
        value = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        try:
            value = json.loads(raw)
        except ValueError:
            return False, _fix_str(raw)
    if "\\u" in raw or "\x00" in raw:
        value = clean(value)
    return True, value


def parse_ts(raw: Any) -> datetime | None:
    if isinstance(raw, datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=timezone.utc)
    if not isinstance(raw, str) or not raw:
        return None
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def iso(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def attachment_type(content_type: str) -> str:
    if content_type.startswith("image/"):
        return "image"
    if content_type.startswith("audio/"):
        return "audio"
    return "file"


def page_files(folder: str | Path) -> list[str]:
    """`page-N.json` files of a list, in page order (numeric, not lexical). Paths are
    plain strings: a conversation takes a handful of them, and pathlib's objects cost
    more than the reading they lead to."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    folder = os.fspath(folder)
    found = []
    for name in names:
        m = _PAGE_NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(folder, name)))
    found.sort()
    return [p for _, p in found]


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------
# plans


@dataclass(slots=True)
class MediaItem:
    sid: str
    content_type: str
    filename: str | None
    size: int
    att_type: str
    source: Path | None  # the export file, when present
    metadata: str


class MessagePlan(msgspec.Struct, gc=False):
    """One message mapped to our columns (a Struct: built in C, not tracked by the GC)."""

    sid: str
    index: int
    user_id: int | None
    type: str
    content: bytes  # JSON, UTF-8: msgspec's output as the COPY sends it
    lang: str | None
    metadata: bytes  # JSON, UTF-8
    created_at: datetime
    edited_at: datetime | None
    updated_at: datetime
    media: list[MediaItem]
    reply_to_index: int | None = None  # attributes.reply_to_index, when it is usable
    # created_at / edited_at as timestamptz COPY text (rows.ts, or the export's own
    # text in the canonical shape)
    created_txt: str = ""
    edited_txt: str = NULL


@dataclass(slots=True)
class ParticipantPlan:
    user_id: int
    role: str
    joined_at: datetime
    horizon_index: int | None  # Twilio's last_read_message_index
    last_read_at: datetime | None


@dataclass
class ConversationPlan:
    sid: str
    signature: str
    type: str
    group: str
    name: str
    status: str
    order_id: int | None
    metadata: str
    created_at: datetime
    updated_at: datetime
    participants: list[ParticipantPlan]
    messages: list[MessagePlan]
    stats: Counter[str] = field(default_factory=Counter)
    unknown_identities: set[str] = field(default_factory=set)
    missing_media: list[str] = field(default_factory=list)
    issues: list[dict[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------


class ExportError(Exception):
    """the export folder cannot be read at all"""


class Export:
    """A Twilio export folder plus the users.csv / orders.csv that map it."""

    def __init__(
        self, root: Path, users_csv: Path, orders_csv: Path, default_lang: str = "ru"
    ) -> None:
        self.root = Path(root)
        self._conversations_dir = os.path.join(self.root, "conversations")
        self.users_csv = Path(users_csv)
        self.orders_csv = Path(orders_csv)
        self.default_lang = default_lang
        if not (self.root / "conversations").is_dir():
            raise ExportError(f"{self.root} has no conversations/ folder")
        self.stats: Counter[str] = Counter()  # export-wide (not per conversation)
        self.issues: list[dict[str, str]] = []
        self.users: dict[str, tuple[int, str]] = {}
        self.orders: list[tuple[int, int | None, int | None, int | None]] = []
        self.order_ids: set[int] = set()
        self.twilio_names: dict[str, str] = {}
        self.admin_roles: set[str] = set()
        self.unknown_identities: set[str] = set()
        self._first: dict[str, int] | None = None
        self._media_names: set[str] | None = None

    # ---- export-wide inputs --------------------------------------------------
    def load_side_files(self) -> None:
        self._load_users_csv()
        self._load_orders_csv()
        self._load_twilio_users()
        self._load_roles()

    def _load_users_csv(self) -> None:
        with open(self.users_csv, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                try:
                    ident = row["identity"]
                    if not ident:
                        raise ValueError("empty identity")
                    uid = _id(row["user_id"])
                except (KeyError, TypeError, ValueError, AttributeError):
                    self.stats["users_csv_bad_rows"] += 1
                    self.issues.append({"kind": "users_csv_bad_row", "line": str(n)})
                    continue
                role = (row.get("role") or "buyer").strip()
                if role not in USER_ROLES:
                    self.stats["users_csv_unknown_roles"] += 1
                    self.issues.append({"kind": "users_csv_unknown_role", "line": str(n)})
                    role = "buyer"
                if ident in self.users:  # the last row wins, as before
                    self.stats["users_csv_duplicate_identities"] += 1
                    self.issues.append({"kind": "users_csv_duplicate_identity",
                                        "line": str(n)})
                self.users[ident] = (uid, role)
        self.stats["users_csv_rows"] = len(self.users)

    def _load_orders_csv(self) -> None:
        def opt(v: str | None) -> int | None:
            return _id(v) if (v or "").strip() else None

        with open(self.orders_csv, encoding="utf-8", newline="") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                try:
                    order = (
                        _id(row["order_id"]),
                        opt(row.get("buyer_id")),
                        opt(row.get("manager_id")),
                        opt(row.get("fulfillment_id")),
                    )
                except (KeyError, TypeError, ValueError, AttributeError):
                    self.stats["orders_csv_bad_rows"] += 1
                    self.issues.append({"kind": "orders_csv_bad_row", "line": str(n)})
                    continue
                if order[0] in self.order_ids:  # the first row wins
                    self.stats["orders_csv_duplicate_ids"] += 1
                    self.issues.append({"kind": "orders_csv_duplicate_id", "line": str(n)})
                else:
                    self.order_ids.add(order[0])
                    self.orders.append(order)
        self.stats["orders"] = len(self.orders)

    def _load_twilio_users(self) -> None:
        for item in self._list_items(self.root / "users", "users"):
            if not isinstance(item, dict):
                continue
            self.stats["twilio_users"] += 1
            ok, _ = parse_attributes(item.get("attributes"))
            if not ok:
                self.stats["bad_attributes_users"] += 1
                self.issues.append({"kind": "bad_attributes", "resource": "user",
                                    "sid": str(item.get("sid"))})
            ident = item.get("identity")
            name = item.get("friendly_name")
            if isinstance(ident, str) and isinstance(name, str):
                self.twilio_names[ident] = _fix_str(name)
            if isinstance(ident, str) and ident not in self.users:
                self.stats["twilio_users_not_in_csv"] += 1

    def _load_roles(self) -> None:
        for item in self._list_items(self.root / "roles", "roles"):
            if not isinstance(item, dict):
                continue
            name = str(item.get("friendly_name") or "").lower()
            if "admin" in name and isinstance(item.get("sid"), str):
                self.admin_roles.add(item["sid"])

    # ---- pages -----------------------------------------------------------------
    def _read_page(self, path: str, key: str, fix_strings: bool = True) -> list[Any]:
        """Items of one list page; an unreadable page is counted and yields nothing.
        Strings that PostgreSQL cannot store are fixed here (`clean`) unless the caller
        does it field by field (`fix_strings` false), to count what it changes."""
        try:
            data = read_bytes(path)
        except OSError:
            self._bad_page(path, "unreadable")
            return []
        try:
            doc = _any_decoder.decode(data)
        except msgspec.DecodeError:
            try:
                doc = json.loads(data)
                if fix_strings:
                    doc = clean(doc)
            except ValueError:
                self._bad_page(path, "invalid JSON")
                return []
        items = doc.get(key) if isinstance(doc, dict) else None
        if not isinstance(items, list):
            self._bad_page(path, f"no {key!r} list")
            return []
        return items

    def _bad_page(self, path: str, why: str) -> None:
        self.stats["bad_pages"] += 1
        self.issues.append({"kind": "bad_page", "path": os.path.relpath(path, self.root),
                            "reason": why})

    def _list_items(self, folder: str | Path, key: str) -> Iterator[Any]:
        for path in page_files(folder):
            yield from self._read_page(path, key)

    def _message_records(self, folder: str, plan_stats: Counter[str],
                         issues: list[dict[str, str]]) -> list[MessageRec]:
        out: list[MessageRec] = []
        for path in page_files(folder):
            try:
                data = read_bytes(path)
            except OSError:
                self._bad_page(path, "unreadable")
                continue
            try:
                recs = _with_dates(_msg_page_decoder.decode(data).messages)
                if _has_nul_escape(data):  # a NUL may sit in a field other than a body
                    for rec in recs:
                        _fix_message_strings(rec, plan_stats, issues, surrogates=False)
                out.extend(recs)
                continue
            except msgspec.DecodeError:
                pass
            for k, item in enumerate(self._read_page(path, "messages", fix_strings=False)):
                rec = _lenient_message(item)
                if rec is None:
                    plan_stats["invalid_message_records"] += 1
                    issues.append({"kind": "invalid_message_record",
                                   "path": os.path.relpath(path, self.root),
                                   "position": str(k)})
                else:
                    _fix_message_strings(rec, plan_stats, issues)
                    out.append(rec)
        return out

    # ---- conversations -----------------------------------------------------------
    def index_listing(self) -> int:
        """Read the conversation list once, up front: where each sid first occurs.

        Built in one go before streaming starts, so the de-duplication map does not
        grow (and fragment the heap) while the import runs. Returns the count of
        distinct conversations.
        """
        first: dict[str, int] = {}
        pos = 0
        for path in page_files(self._conversations_dir):
            try:
                data = read_bytes(path)
            except OSError:
                continue  # _read_page yields nothing for it either
            try:
                doc = _any_decoder.decode(data)
            except msgspec.DecodeError:
                try:
                    doc = json.loads(data)
                except ValueError:
                    continue
            items = doc.get("conversations") if isinstance(doc, dict) else None
            for item in items if isinstance(items, list) else []:
                sid = item.get("sid") if isinstance(item, dict) else None
                if isinstance(sid, str) and sid not in first:
                    first[sid] = pos
                pos += 1
        self._first = first
        return len(first)

    def conversation_records(self, count: bool = True) -> Iterator[dict[str, Any]]:
        """Distinct conversation records in listing order (duplicates counted, unless
        `count` is false: the listing's counts belong to one reader of it only)."""
        if self._first is None:
            self.index_listing()
        first = self._first or {}
        pos = 0
        stats: Counter[str] = self.stats if count else Counter()
        for path in page_files(self._conversations_dir):
            if count:
                items = self._read_page(path, "conversations")
            else:
                kept = self.stats, self.issues
                self.stats, self.issues = Counter(), []
                try:
                    items = self._read_page(path, "conversations")
                finally:
                    self.stats, self.issues = kept
            for item in items:
                here = pos
                pos += 1
                stats["conversation_records_in_pages"] += 1
                sid = item.get("sid") if isinstance(item, dict) else None
                if not isinstance(sid, str) or not _SAFE_SID.match(sid):
                    stats["invalid_conversation_records"] += 1
                    continue
                if first.get(sid) != here:
                    stats["duplicate_conversation_records"] += 1
                    continue
                yield item

    def count_conversations(self) -> int:
        return self.index_listing()

    def signature(self, record: dict[str, Any]) -> str:
        """Cheap fingerprint of one conversation: its record and its page files' stat."""
        h = hashlib.sha256(_encoder.encode(record))
        base = os.path.join(self._conversations_dir, record["sid"])
        for sub in ("participants", "messages"):
            for path in page_files(os.path.join(base, sub)):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                name = os.path.basename(path)
                h.update(f"{sub}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def plan(self, conv: dict[str, Any], signature: str) -> ConversationPlan:
        """Map one conversation (with its participants and messages) to our rows."""
        sid: str = conv["sid"]
        st: Counter[str] = Counter()
        unknown: set[str] = set()
        issues: list[dict[str, str]] = []
        base = os.path.join(self._conversations_dir, sid)

        # ---- participants
        listed = [p for p in self._list_items(os.path.join(base, "participants"),
                                              "participants")
                  if isinstance(p, dict)]
        st["participant_records"] += len(listed)
        owner_pos = None
        earliest = None
        for pos, p in enumerate(listed):
            t = parse_ts(p.get("date_created")) or EPOCH
            if earliest is None or t < earliest:
                earliest, owner_pos = t, pos
        listed_sids = {p.get("sid") for p in listed if isinstance(p.get("sid"), str)}
        parts_raw: list[tuple[dict[str, Any], int, str]] = []
        for pos, p in enumerate(listed):
            ok, _ = parse_attributes(p.get("attributes"))
            if not ok:
                st["bad_attributes_participants"] += 1
                issues.append({"kind": "bad_attributes", "resource": "participant",
                               "sid": str(p.get("sid"))})
            ident = p.get("identity")
            if ident is None:
                st["participants_without_identity"] += 1
                continue
            if not isinstance(ident, str) or ident not in self.users:
                st["participants_unknown_identity"] += 1
                unknown.add(_fix_str(str(ident)))
                continue
            if pos == owner_pos:
                role = "owner"
            elif p.get("role_sid") in self.admin_roles:
                role = "admin"
            else:
                role = "member"
            parts_raw.append((p, self.users[ident][0], role))

        # ---- messages: de-duplicate by sid (greatest date_updated, later on a tie)
        records = self._message_records(os.path.join(base, "messages"), st, issues)
        st["message_records_in_pages"] += len(records)
        indices = [r.index for r in records]
        if len({r.sid for r in records}) == len(records) and indices == sorted(indices):
            # no duplicates, already in index order: the order the sort below gives
            ordered = records
        else:
            best: dict[str, tuple[MessageRec, int]] = {}
            for pos, rec in enumerate(records):
                prev = best.get(rec.sid)
                if prev is not None:
                    st["duplicate_message_records"] += 1
                    old = prev[0]
                    new_t = rec.date_updated or rec.date_created or EPOCH
                    old_t = old.date_updated or old.date_created or EPOCH
                    if new_t < old_t:
                        continue
                best[rec.sid] = (rec, pos)
            ordered = [rp[0] for rp in sorted(best.values(),
                                              key=lambda rp: (rp[0].index, rp[1]))]
            indices = [r.index for r in ordered]
            del best
        del records

        missing_media: list[str] = []
        messages = self._messages(ordered, st, unknown, missing_media, listed_sids, issues)
        msg_psids = {r.participant_sid for r in ordered if r.participant_sid}
        del ordered
        if indices:
            st["missing_indices_below_last"] += indices[-1] + 1 - len(set(indices))
        index_set = set(indices)
        if len(index_set) < len(indices):  # two sids, one index: both are imported
            st["duplicate_message_indices"] += len(indices) - len(index_set)
            issues.append({"kind": "duplicate_message_index", "conversation": sid})
        for mp in messages:
            target = mp.reply_to_index
            if target is None:
                continue
            if target >= mp.index:
                # a reply can only quote an earlier message: never linked
                st["replies_to_later_index"] += 1
                mp.reply_to_index = None
            elif target not in index_set:
                # deleted in Twilio, or in an earlier export: the writer looks in the
                # database too, and counts what it cannot link
                st["replies_target_not_in_export"] += 1

        participants = []
        for p, uid, role in parts_raw:
            lr = p.get("last_read_message_index")
            lr = lr if isinstance(lr, int) and not isinstance(lr, bool) else None
            if lr is not None and lr not in index_set:
                st["read_horizons_on_index_gap"] += 1
            participants.append(ParticipantPlan(
                user_id=uid, role=role,
                joined_at=parse_ts(p.get("date_created")) or EPOCH,
                horizon_index=lr, last_read_at=parse_ts(p.get("last_read_timestamp"))))
            st["chat_participants"] += 1
            st["chat_participants_" + role] += 1

        # ---- the chat
        ok, cattrs = parse_attributes(conv.get("attributes"))
        twilio: dict[str, Any] = {
            "sid": sid,
            "unique_name": clean(conv.get("unique_name")),
            "state": clean(conv.get("state")),
            "timers": clean(conv.get("timers")),
        }
        if ok:
            twilio["attributes"] = cattrs
        else:
            twilio["attributes_raw"] = cattrs
            st["bad_attributes_conversations"] += 1
            issues.append({"kind": "bad_attributes", "resource": "conversation", "sid": sid})
        order_id = _order_id(conv.get("unique_name"), cattrs if ok else None)
        if order_id is not None and order_id not in self.order_ids:
            st["chats_with_order_not_in_csv"] += 1
            issues.append({"kind": "order_not_in_csv", "sid": sid, "order_id": str(order_id)})
        all_sids = listed_sids | msg_psids
        ctype = "private" if order_id is None and len(all_sids) == 2 else "group"
        status = "archived" if conv.get("state") == "closed" else "active"
        if order_id is not None:
            group = "order"
        elif ok and isinstance(cattrs, dict) and isinstance(cattrs.get("chat_kind"), str) \
                and _GROUP_WORD.match(cattrs["chat_kind"]):
            group = cattrs["chat_kind"]
        else:
            group = ctype
        created = parse_ts(conv.get("date_created"))
        updated = parse_ts(conv.get("date_updated"))
        if created is None:
            st["bad_timestamps"] += 1
            created = messages[0].created_at if messages else (updated or EPOCH)
        if updated is None:
            updated = max([created] + [m.updated_at for m in messages])
        st["chats"] += 1
        st["chats_" + ctype] += 1
        st["chats_" + status] += 1
        st["chats_with_order"] += order_id is not None
        st["chats_without_messages"] += not messages
        self.unknown_identities |= unknown
        return ConversationPlan(
            sid=sid, signature=signature, type=ctype, group=group,
            name=_fix_str(conv.get("friendly_name") or ""),
            status=status, order_id=order_id, metadata=dumps({"twilio": twilio}),
            created_at=created, updated_at=updated,
            participants=participants, messages=messages, stats=st,
            unknown_identities=unknown, missing_media=missing_media, issues=issues,
        )

    def _messages(self, recs: list[MessageRec], st: Counter[str], unknown: set[str],
                  missing_media: list[str], listed_sids: set[str | None],
                  issues: list[dict[str, str]]) -> list[MessagePlan]:
        """Map a conversation's de-duplicated records, in order. The hot path of the
        import: plain locals, counts summed into `st` at the end."""
        users = self.users
        default_lang = self.default_lang
        encode = _encoder.encode
        out: list[MessagePlan] = []
        append = out.append
        types: Counter[str] = Counter()
        n_edited = max_bytes = 0
        for rec in recs:
            author = rec.author
            if author is not None and "\x00" in author:
                author = no_nul(author)
            user = users.get(author) if author is not None else None
            if author != "system":
                if user is None:
                    st["messages_by_unknown_author"] += 1
                    if author is not None:
                        unknown.add(_fix_str(author))
                if rec.participant_sid not in listed_sids:
                    st["messages_by_departed_participant"] += 1

            if rec.media is None and rec.media_sid is None and rec.mediaSid is None:
                media: list[MediaItem] = []
                legacy = False
            else:
                items, legacy = _media_items(rec)
                if legacy:
                    st["messages_with_legacy_media_shape"] += 1
                media = [self._media(item, st, missing_media) for item in items]
            if author == "system":
                mtype = "system"
            elif media:
                mtype = media[0].att_type
            else:
                mtype = "text"
            types[mtype] += 1

            body = rec.body
            if body is not None and not isinstance(body, str):
                body = str(body)
            if not body:
                st["messages_empty_body"] += 1
                content, lang = b"{}", None
            else:
                if "\x00" in body:
                    st["bodies_with_nul_char"] += 1
                    body = body.replace("\x00", "\ufffd")
                if "\\u0000" in body:
                    st["bodies_with_literal_backslash_u0000"] += 1
                if body.isascii():
                    nbytes = len(body)
                else:
                    nbytes = len(body.encode("utf-8"))
                if nbytes > 1600:  # never more characters than bytes
                    if len(body) > 1600:
                        st["bodies_over_1600_chars"] += 1
                    if nbytes > MAX_TEXT_BYTES:
                        st["bodies_over_32k_bytes"] += 1
                if nbytes > max_bytes:
                    max_bytes = nbytes
                lang = detect(body, default_lang)
                content = encode({lang: body})

            created = rec.date_created
            if created is None:
                st["bad_timestamps"] += 1
                created = rec.date_updated or EPOCH
                created_txt = ts(created)
            else:
                created_txt = rec.created_raw or ts(created)
            updated = rec.date_updated or created
            if updated > created:  # then updated is rec.date_updated
                edited: datetime | None = updated
                edited_txt = rec.updated_raw or ts(updated)
                n_edited += 1
            else:
                edited, edited_txt = None, NULL

            sid = rec.sid
            raw_attrs = rec.attributes
            reply_to = None
            if raw_attrs == "{}" or raw_attrs is None:
                tw: dict[str, Any] = {
                    "sid": sid, "index": rec.index, "author": author,
                    "participant_sid": rec.participant_sid, "attributes": {},
                    "content_sid": rec.content_sid, "delivery": rec.delivery,
                }
            else:
                ok, attrs = parse_attributes(raw_attrs)
                tw = {"sid": sid, "index": rec.index, "author": author,
                      "participant_sid": rec.participant_sid}
                if ok:
                    tw["attributes"] = attrs
                    if isinstance(attrs, dict) and "reply_to_index" in attrs:
                        st["replies"] += 1
                        reply_to = _reply_index(attrs["reply_to_index"])
                        if reply_to is None:
                            st["replies_bad_index"] += 1
                else:
                    tw["attributes_raw"] = attrs
                    st["bad_attributes_messages"] += 1
                    issues.append({"kind": "bad_attributes", "resource": "message",
                                   "sid": sid})
                tw["content_sid"] = rec.content_sid
                tw["delivery"] = rec.delivery
            if legacy:
                tw["legacy_media"] = True
            append(MessagePlan(
                sid, rec.index, user[0] if user else None, mtype, content, lang,
                encode({"twilio": tw}), created, edited, updated, media,
                reply_to, created_txt, edited_txt))
        if out:
            st["messages"] += len(out)
            for mtype, n in types.items():
                st["messages_" + mtype] += n
        if n_edited:
            st["messages_edited"] += n_edited
        if max_bytes > st["max_body_utf8_bytes"]:
            st["max_body_utf8_bytes"] = max_bytes
        return out

    def _media(self, item: dict[str, Any], st: Counter[str],
               missing_media: list[str]) -> MediaItem:
        st["attachments"] += 1
        sid = _fix_str(str(item.get("sid") or ""))
        ctype = item.get("content_type")
        ctype = _fix_str(ctype) if isinstance(ctype, str) and ctype else "application/octet-stream"
        fname = item.get("filename")
        fname = _fix_str(fname) if isinstance(fname, str) else None
        size = item.get("size")
        size = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0
        source = None
        if _SAFE_SID.match(sid):
            if sid in self._media_files():
                path = self.root / "media" / sid
                try:
                    size = path.stat().st_size
                    source = path
                except OSError:
                    pass
        else:
            st["media_with_invalid_sid"] += 1
        if source is None:
            st["missing_media_files"] += 1
            missing_media.append(sid)
        else:
            st["media_files_present"] += 1
        meta = {"twilio": {"sid": sid, "category": clean(item.get("category")),
                           "size": item.get("size")}}
        return MediaItem(sid=sid, content_type=ctype, filename=fname, size=size,
                         att_type=attachment_type(ctype), source=source, metadata=dumps(meta))

    def _media_files(self) -> set[str]:
        """Names of the files in media/, listed once (most referenced media are absent,
        so one listing saves a failed stat per attachment)."""
        if self._media_names is None:
            names: set[str] = set()
            try:
                with os.scandir(self.root / "media") as it:
                    for entry in it:
                        if entry.is_file():
                            names.add(entry.name)
            except OSError:
                pass
            self._media_names = names
        return self._media_names

    def count_receipts(self, sid: str) -> int:
        """Delivery receipts of one conversation (counted, not imported)."""
        n = 0
        folder = os.path.join(self._conversations_dir, sid, "messages")
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return 0
        for entry in entries:
            if entry.is_dir():
                n += sum(1 for _ in self._list_items(os.path.join(entry.path, "receipts"),
                                                     "delivery_receipts"))
        return n


def _reply_index(v: Any) -> int | None:
    """attributes.reply_to_index as an index: an int >= 0, or such an int as a string."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v if v >= 0 else None
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return None


def _order_id(unique_name: Any, attrs: Any) -> int | None:
    if isinstance(unique_name, str):
        m = _ORDER_UNIQUE.match(unique_name)
        if m:
            return int(m.group(1))
    if isinstance(attrs, dict):
        v = attrs.get("order_id")
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().isdigit():
            return int(v.strip())
    return None


def _media_items(rec: MessageRec) -> tuple[list[dict[str, Any]], bool]:
    """Media of a message: the `media` list, or the legacy single-media shape."""
    m = rec.media
    if isinstance(m, list) and m:
        return [x for x in m if isinstance(x, dict)], False
    if isinstance(m, dict) and m:
        return [m], True
    sid = rec.media_sid or rec.mediaSid
    if sid:
        return [{
            "sid": sid,
            "content_type": rec.media_content_type or rec.mediaContentType,
            "filename": rec.media_filename or rec.mediaFilename,
            "size": rec.media_size if rec.media_size is not None else rec.mediaSize,
        }], True
    return [], False


_LENIENT_FIELDS = ("author", "body", "participant_sid", "content_sid")
_FIXED_FIELDS = ("sid", "author", "participant_sid", "content_sid", "media_sid",
                 "media_content_type", "media_filename", "mediaSid", "mediaContentType",
                 "mediaFilename")
_NESTED_FIELDS = ("media", "delivery", "attributes")


def _fix_message_strings(rec: MessageRec, st: Counter[str], issues: list[dict[str, str]],
                         surrogates: bool = True) -> None:
    """Makes a record's strings storable, counting and listing each field changed: a
    NUL or a lone surrogate becomes U+FFFD. A body keeps its NULs here: the mapping
    replaces and counts them (`bodies_with_nul_char`), as EXPECTED.md asks. Without
    `surrogates` (a page msgspec decoded, which refuses lone surrogates) only NULs
    are looked for."""
    changed = []
    for name in _FIXED_FIELDS:
        v = getattr(rec, name)
        if v is not None and (surrogates or "\x00" in v) and (fixed := _fix_str(v)) != v:
            setattr(rec, name, fixed)
            changed.append(name)
    if (surrogates and rec.body is not None
            and (fixed := _fix_surrogates(rec.body)) != rec.body):
        rec.body = fixed
        changed.append("body")
    for name in _NESTED_FIELDS:
        v = getattr(rec, name)
        if v is None:
            continue
        if name == "attributes" and isinstance(v, str):
            # parsed in the mapping (and kept raw when it is not JSON), which replaces
            # its NULs; only what no parser takes, a lone surrogate, is replaced here
            fixed = _fix_surrogates(v) if surrogates else v
            did = fixed != v
        else:
            fixed, did = _clean_counted(v)
        if did:
            setattr(rec, name, fixed)
            changed.append(name)
    for name in changed:
        st["message_strings_rewritten"] += 1
        issues.append({"kind": "string_rewritten", "resource": "message", "sid": rec.sid,
                       "field": name})


def _lenient_message(item: Any) -> MessageRec | None:
    """A message record from loosely typed JSON, or None when it has no sid/index."""
    if not isinstance(item, dict):
        return None
    sid, index = item.get("sid"), item.get("index")
    if not isinstance(sid, str) or not sid:
        return None
    if isinstance(index, bool) or (isinstance(index, float) and not index.is_integer()):
        return None
    if isinstance(index, str) and not (index.isascii() and index.isdigit()):
        return None  # int() would take "1_0" or "٣"
    try:
        index = int(index)
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0 <= index <= MAX_ID:
        return None
    kw: dict[str, Any] = {}
    for name in _LENIENT_FIELDS:
        v = item.get(name)
        kw[name] = None if v is None else (v if isinstance(v, str) else str(v))
    for name in ("media_sid", "media_content_type", "media_filename",
                 "mediaSid", "mediaContentType", "mediaFilename"):
        v = item.get(name)
        kw[name] = v if isinstance(v, str) else None
    for name in ("media_size", "mediaSize"):
        v = item.get(name)
        kw[name] = v if isinstance(v, int) and not isinstance(v, bool) else None
    return MessageRec(
        sid=sid, index=index, media=item.get("media"),
        attributes=item.get("attributes"), delivery=item.get("delivery"),
        date_created=parse_ts(item.get("date_created")),
        date_updated=parse_ts(item.get("date_updated")), **kw,
    )
