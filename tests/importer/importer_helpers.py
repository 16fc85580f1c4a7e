"""Helpers for the importer tests: the fixture generator, command lines, digests."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    env = os.environ.get("BESEDA_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


GENERATOR = shared_dir() / "fixtures" / "make_twilio_export.py"


def generate(out: Path, conversations: int, messages: int, seed: int) -> Path:
    if not GENERATOR.is_file():
        pytest.skip(f"fixture generator not found at {GENERATOR} (set BESEDA_SHARED_DIR)")
    subprocess.run(
        [sys.executable, str(GENERATOR), str(out), "--conversations", str(conversations),
         "--messages-per-conversation", str(messages), "--seed", str(seed), "--jobs", "1"],
        check=True, capture_output=True)
    return out


def importer_argv(export: Path, dsn: str, data_dir: Path, *extra: str) -> list[str]:
    return [str(export), "--database-url", dsn, "--data-dir", str(data_dir),
            "--progress", "none", *extra]


def importer_cmd(export: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "importer", str(export), "--data-dir", str(data_dir),
            "--progress", "lines", "--progress-every", "0", *extra]


def subprocess_env(dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = dsn
    env["BESEDA_LOG_LEVEL"] = "INFO"
    return env


# ---- what the database holds -----------------------------------------------------


def _ts(t: Any) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def checksums(conn: asyncpg.Connection) -> tuple[str, str]:
    """EXPECTED.md section 7, rebuilt from the database."""
    rows = await conn.fetch(
        """SELECT c.external_id AS ch, m.id AS mid,
                  (m.metadata #>> '{twilio,index}')::bigint AS idx,
                  m.metadata #>> '{twilio,author}' AS author, m.type, m.created_at,
                  m.edited_at, m.content::text AS content,
                  (SELECT count(*) FROM message_attachments a WHERE a.message_id = m.id) AS n
           FROM chats c LEFT JOIN messages m ON m.chat_id = c.id
           WHERE c.external_id IS NOT NULL
           ORDER BY c.external_id, m.seq""")
    chats: dict[str, tuple[Any, Any]] = {}
    for r in rows:
        hb, hf = chats.setdefault(r["ch"], (hashlib.sha256(), hashlib.sha256()))
        if r["mid"] is None:
            continue
        content = json.loads(r["content"])
        body = next(iter(content.values())) if content else ""
        hb.update((json.dumps([r["idx"], body]) + "\n").encode("ascii"))
        hf.update((json.dumps([r["idx"], r["author"], r["type"], _ts(r["created_at"]),
                               _ts(r["edited_at"]), r["n"], body]) + "\n").encode("ascii"))
    fb, ff = hashlib.sha256(), hashlib.sha256()
    for ch in sorted(chats):
        hb, hf = chats[ch]
        fb.update(f"{ch} {hb.hexdigest()}\n".encode("ascii"))
        ff.update(f"{ch} {hf.hexdigest()}\n".encode("ascii"))
    return fb.hexdigest(), ff.hexdigest()


FULL_TABLES = {
    "users": "id", "orders": "id", "chats": "id", "chat_participants": "chat_id, user_id",
    "messages": "id", "message_attachments": "id", "chat_events": "chat_id, rev",
}


async def full_digest(conn: asyncpg.Connection) -> dict[str, str]:
    """Every column of every row (ids and timestamps included), per table."""
    out = {}
    for table, key in FULL_TABLES.items():
        out[table] = await conn.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {key}), '')) "
            f"FROM {table} t")
    return out


LOGICAL = {
    "chats": """SELECT c.external_id, c.type, c."group", c.name, c.status, c.order_id,
                       c.metadata, c.last_seq, c.rev, c.created_by, c.created_at,
                       c.updated_at, lm.external_id AS last_msg, c.last_message_at
                FROM chats c LEFT JOIN messages lm ON lm.id = c.last_message_id""",
    "participants": """SELECT c.external_id, p.user_id, p.role, lr.external_id AS lr,
                              p.last_read_seq, p.last_read_at, p.delivered_seq,
                              p.delivered_at, p.joined_at
                       FROM chat_participants p JOIN chats c ON c.id = p.chat_id
                       LEFT JOIN messages lr ON lr.id = p.last_read_message_id""",
    "messages": """SELECT c.external_id AS ch, m.seq, m.rev, m.created_rev, m.user_id, m.type,
                          m.content, m.lang, m.metadata, m.message_key, m.created_at,
                          m.edited_at, m.deleted_at, m.external_id,
                          r.external_id AS reply_to
                   FROM messages m JOIN chats c ON c.id = m.chat_id
                   LEFT JOIN messages r ON r.id = m.reply_to_id""",
    "attachments": """SELECT m.external_id AS msg, a.uploader_id, a.type, a.mime_type, a.size,
                             a.name, a.storage_key, a.status, a.metadata, a.created_at,
                             a.external_id
                      FROM message_attachments a JOIN messages m ON m.id = a.message_id""",
}


async def logical_digest(conn: asyncpg.Connection) -> dict[str, str]:
    """The imported content without surrogate ids (which a killed run may burn)."""
    out = {}
    for name, sql in LOGICAL.items():
        out[name] = await conn.fetchval(
            f"SELECT md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) "
            f"FROM ({sql}) x")
    return out


async def check_replies(conn: asyncpg.Connection, report: dict[str, Any]) -> int:
    """Every linked reply points at the message with reply_to_index in its own chat,
    and every reply the export can resolve is linked. Returns the linked count."""
    bad = await conn.fetchval(
        """SELECT count(*) FROM messages m JOIN messages r ON r.id = m.reply_to_id
           WHERE r.chat_id <> m.chat_id OR r.seq >= m.seq
              OR (r.metadata #>> '{twilio,index}') IS DISTINCT FROM
                 (m.metadata #>> '{twilio,attributes,reply_to_index}')""")
    assert bad == 0
    linked = await conn.fetchval("SELECT count(*) FROM messages WHERE reply_to_id IS NOT NULL")
    o = report["other_counts"]
    assert o["replies"] > 0
    assert linked == (o["replies"] - o["replies_bad_index"] - o["replies_to_later_index"]
                      - o["replies_target_not_in_export"])
    return int(linked)


async def clean_import_digest(export: Path, dsn: str, data_dir: Path) -> dict[str, str]:
    """The logical digest of one uninterrupted import of `export` into `dsn`: what a
    killed and resumed import must end with."""
    from importer import cli

    assert await cli.run_async(importer_argv(export, dsn, data_dir)) == 0
    conn = await asyncpg.connect(dsn)
    try:
        return await logical_digest(conn)
    finally:
        await conn.close()

