"""Bad data is counted and carried past, never fatal and never silent."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import asyncpg
import pytest
from importer_helpers import importer_argv
from test_bc22 import CH, write_export

from importer import cli
from importer.export import parse_attributes
from importer.lang import detect
from importer.storage import LocalStorage, StorageError


def test_language_is_guessed_by_script() -> None:
    """Cyrillic -> ru, CJK -> zh, Latin -> en, no letters -> the default."""
    assert detect("Добрый день") == "ru"
    assert detect("您好，请问") == "zh"
    assert detect("Hi there") == "en"
    assert detect("👍🏽🔥 123") == "ru"
    assert detect("👍", default="en") == "en"
    assert detect("Hello, привет, как дела") == "ru"


# The rule, written as character classes: detect() counts the same code points on
# UTF-8 bytes (importer/lang.py), and must answer exactly as this does.
_RULE = {
    "ru": re.compile(r"[\u0400-\u052f]"),
    "zh": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
                     r"\u3040-\u30ff]"),
    "en": re.compile(r"[A-Za-z\u00c0-\u024f]"),
}


def _by_rule(text: str, default: str = "ru") -> str:
    text = text[:512]
    n = {lang: len(rx.findall(text)) for lang, rx in _RULE.items()}
    best = max(n.values())
    return default if best == 0 else next(lang for lang in ("ru", "zh", "en") if n[lang] == best)


def test_language_counts_the_same_code_points_as_the_rule() -> None:
    """Every BMP code point alone and beside a non-ASCII letter, and random mixes
    of the code points around each range's edges (where UTF-8 lead bytes are shared
    with the neighbouring block)."""
    for c in range(0x10000):
        for text in (chr(c), chr(c) + "é", "ж" + chr(c) * 2 + "中"):
            assert detect(text) == _by_rule(text), hex(c)
    edges = [0x40, 0x5B, 0x60, 0x7B, 0xBF, 0xC0, 0xD7, 0xFF, 0x23F, 0x240, 0x24F, 0x250,
             0x3FF, 0x400, 0x4FF, 0x500, 0x52F, 0x530, 0x2FFF, 0x3000, 0x303F, 0x3040,
             0x30FF, 0x3100, 0x33FF, 0x3400, 0x4DBF, 0x4DC0, 0x4DFF, 0x4E00, 0x9FFF, 0xA000,
             0xD800, 0xF8FF, 0xF900, 0xFAFF, 0xFB00, 0xFF0C, 0x1F600, 0x1FFFF, 0x20000,
             0x2EFFF, 0x2F000, 0x2F9FF, 0x2FA00, 0x2FA1F, 0x2FA20, 0x30000, 0x10FFFF]
    pool = [chr(e + d) for e in edges for d in (-1, 0, 1) if 0 <= e + d <= 0x10FFFF]
    rng = random.Random(20261205)
    for _ in range(20_000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 14)))
        assert detect(text) == _by_rule(text), [hex(ord(c)) for c in text]
    long = "中" * 600 + "ж" * 100  # only the first 512 characters are looked at
    assert detect(long) == _by_rule(long) == "zh"


def test_attributes_parse_or_keep_raw() -> None:
    """A JSON string becomes an object; anything else is kept raw and flagged."""
    assert parse_attributes("{\"order\":\"A-1\"}") == (True, {"order": "A-1"})
    assert parse_attributes("{}") == (True, {})
    assert parse_attributes(None) == (True, {})
    assert parse_attributes({"already": 1}) == (True, {"already": 1})
    assert parse_attributes("{role: manager}") == (False, "{role: manager}")
    assert parse_attributes("\x00{}") == (False, "\ufffd{}")
    assert parse_attributes("{\"a\": \"x\\u0000y\"}") == (True, {"a": "x\ufffdy"})


def test_storage_refuses_unsafe_keys(tmp_path: Path) -> None:
    """Keys cannot climb out of the attachments folder."""
    store = LocalStorage(tmp_path)
    src = tmp_path / "src"
    src.write_bytes(b"abc")
    assert store.put("twilio/ab/MEab", src) == 3
    for bad in ("../x", "a/../../x", "/etc/passwd", "a b"):
        try:
            store.put(bad, src)
        except StorageError:
            continue
        raise AssertionError(bad)


async def test_broken_pages_and_records_are_counted(fresh_db: str, tmp_path: Path) -> None:
    """An unparsable page, a record without sid, a lone surrogate: counted, rest imported."""
    ex = write_export(tmp_path / "ex", 0, 100, "2024-10-27T02:00:00Z")
    pages = ex / "conversations" / CH / "messages"
    doc = json.loads((pages / "page-00002.json").read_text(encoding="utf-8"))
    doc["messages"][0]["index"] = "not a number"
    doc["messages"][1]["sid"] = None
    raw = json.dumps(doc, ensure_ascii=False)
    raw = raw.replace('"body": "Сообщение 52', '"body": "\\ud800 Сообщение 52', 1)
    (pages / "page-00002.json").write_text(raw, encoding="utf-8")
    (pages / "page-00003.json").write_text("{\"messages\": [", encoding="utf-8")
    (ex / "conversations" / "page-00002.json").write_text(
        json.dumps({"conversations": [{"sid": "../../etc"}], "meta": {}}), encoding="utf-8")
    out = tmp_path / "r.json"
    rc = await cli.run_async(["--database-url", fresh_db, "--data-dir", str(tmp_path / "d"),
                              "--progress", "none", "--report", str(out), str(ex)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["other_counts"]["bad_pages"] == 1
    assert report["other_counts"]["invalid_message_records"] == 2
    assert report["other_counts"]["invalid_conversation_records"] == 1
    assert report["counts"]["messages"] == 98
    assert [i for i in report["issues"] if i["kind"] == "bad_page"] == [
        {"kind": "bad_page", "path": f"conversations/{CH}/messages/page-00003.json",
         "reason": "invalid JSON"}]
    conn = await asyncpg.connect(fresh_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 98
        body = await conn.fetchval(
            "SELECT content->>'ru' FROM messages WHERE external_id = $1", "IM" + f"{52:032x}")
        assert body.startswith("\ufffd Сообщение 52")
        assert await conn.fetchval("SELECT last_seq FROM chats") == 98
    finally:
        await conn.close()


async def test_rewritten_strings_odd_indices_and_bad_csv_rows_are_counted_and_listed(
        fresh_db: str, tmp_path: Path) -> None:
    """What a newcomer's attack found uncounted: a NUL or lone surrogate replaced in a
    sid, author or body (on a page the fast decoder takes and on one it refuses), an
    index below 0, beyond bigint or not whole, two sids sharing an index, and
    users.csv / orders.csv rows with ids out of range, a repeated identity or an
    unknown role. All are counted and listed; none stops the import."""
    from test_fallback import CH_A, _msg, _page, _sid, write_export

    ex = write_export(tmp_path / "ex", CH_A, [_msg(CH_A, i) for i in range(3)])
    pages = ex / "conversations" / CH_A / "messages"
    lenient = [_msg(CH_A, 3), _msg(CH_A, 4), _msg(CH_A, 5)]
    lenient[0]["body"] = "real \x00 NUL"
    lenient[1]["body"] = "lone \ud800 surrogate"
    lenient[2]["author"] = "\udc00auth"
    bad = [{**_msg(CH_A, 6), "index": -1}, {**_msg(CH_A, 7), "index": 2**63 + 5},
           {**_msg(CH_A, 8), "index": 1e300}, {**_msg(CH_A, 9), "index": "7x"}]
    # JSON escapes (\ud800 cannot be written as UTF-8): the fast decoder refuses it
    (pages / "page-00002.json").write_text(
        json.dumps({"messages": lenient + bad, "meta": {}}), encoding="utf-8")
    fast = [{**_msg(CH_A, 10), "sid": "IM\x00nul"}, {**_msg(CH_A, 11), "index": 10}]
    _page(pages / "page-00003.json", "messages", fast)
    (ex / "users.csv").write_text(
        "identity,user_id,role\nu_1,31,buyer\nu_2,32,manager\nu_2,33,manager\n"
        "huge,99999999999999999999999,buyer\nneg,-5,buyer\nodd,34,superadmin\n",
        encoding="utf-8")
    (ex / "orders.csv").write_text(
        "order_id,buyer_id,manager_id,fulfillment_id\n999999999999999999999,31,32,\n"
        "7,31,32,\n", encoding="utf-8")
    out = tmp_path / "r.json"
    assert await cli.run_async(importer_argv(ex, fresh_db, tmp_path / "d",
                                             "--report", str(out))) == 0
    report = json.loads(out.read_text())
    other, counts = report["other_counts"], report["counts"]
    assert counts["bodies_with_nul_char"] == 1  # counted on the refused page too
    assert other["message_strings_rewritten"] == 3
    rewritten = sorted((i["sid"], i["field"]) for i in report["issues"]
                       if i["kind"] == "string_rewritten")
    assert rewritten == sorted([(_sid(4), "body"), (_sid(5), "author"),
                                ("IM\ufffdnul", "sid")])
    assert other["invalid_message_records"] == 4
    assert sum(i["kind"] == "invalid_message_record" for i in report["issues"]) == 4
    assert other["duplicate_message_indices"] == 1
    assert other["users_csv_bad_rows"] == 2 and other["orders_csv_bad_rows"] == 1
    assert other["users_csv_duplicate_identities"] == 1
    assert other["users_csv_unknown_roles"] == 1
    assert counts["messages"] == report["run"]["messages_inserted"] == 8
    conn = await asyncpg.connect(fresh_db)
    try:
        stored = {r["external_id"]: r for r in await conn.fetch(
            "SELECT external_id, content->>'en' AS en, content->>'ru' AS ru, user_id, "
            "metadata #>> '{twilio,author}' AS author FROM messages")}
        assert set(stored) == {_sid(i) for i in range(6)} | {"IM\ufffdnul", _sid(11)}
        assert "real \ufffd NUL" in (stored[_sid(3)]["en"], stored[_sid(3)]["ru"])
        assert stored[_sid(5)]["author"] == "\ufffdauth"
        # the repeated identity's last row wins; out-of-range ids never reach the table
        assert [r["id"] for r in await conn.fetch("SELECT id FROM users ORDER BY id")] \
            == [31, 33, 34]
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1
    finally:
        await conn.close()


def test_batch_messages_must_be_positive() -> None:
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit):
            cli.parser().parse_args(["ex", "--batch-messages", bad])


async def test_nuls_in_media_delivery_and_lax_numbers_never_stop_the_import(
        fresh_db: str, tmp_path: Path) -> None:
    """A second attack's cases: a NUL in a media sid, a legacy media sid or a delivery
    summary on a page the fast decoder takes (the run failed on every try, or lost the
    message); numbers that int() reads but are not plain decimals; a repeated order
    id; an empty identity; a dry-run report into a folder that does not exist yet."""
    from test_fallback import CH_A, _msg, _sid, write_export

    msgs = [_msg(CH_A, i) for i in range(5)]
    msgs[1]["media"] = [{"sid": "ME\x00nul", "content_type": "image/png",
                         "filename": "a\x00.png", "size": 3, "category": "media"}]
    msgs[2]["delivery"] = {"total": 1, "read": "x\x00"}
    msgs[3]["media_sid"] = "ME\x00legacy"
    ex = write_export(tmp_path / "ex", CH_A, msgs)
    pages = ex / "conversations" / CH_A / "messages"
    lax = [{**_msg(CH_A, 10), "index": True}, {**_msg(CH_A, 11), "index": "1_0"}]
    (pages / "page-00002.json").write_text(json.dumps({"messages": lax, "meta": {}}),
                                          encoding="utf-8")
    (ex / "users.csv").write_text("identity,user_id,role\nu_1,31,buyer\nu_2,32,manager\n"
                                  "u_3,1_000,buyer\n,9999,buyer\n", encoding="utf-8")
    (ex / "orders.csv").write_text("order_id,buyer_id,manager_id,fulfillment_id\n"
                                   "1_2,31,32,\n7,31,32,\n7,32,31,\n", encoding="utf-8")
    dry = tmp_path / "not" / "yet" / "dry.json"
    assert await cli.run_async(importer_argv(ex, fresh_db, tmp_path / "d", "--dry-run",
                                             "--report", str(dry))) == 0
    assert json.loads(dry.read_text())["run"]["dry_run"] is True
    for attempt in range(2):  # the second run finds everything done
        out = tmp_path / f"r{attempt}.json"
        assert await cli.run_async(importer_argv(ex, fresh_db, tmp_path / "d",
                                                 "--report", str(out))) == 0
    report = json.loads((tmp_path / "r0.json").read_text())
    other = report["other_counts"]
    assert sorted((i["sid"], i["field"]) for i in report["issues"]
                  if i["kind"] == "string_rewritten") == sorted(
        [(_sid(1), "media"), (_sid(2), "delivery"), (_sid(3), "media_sid")])
    assert other["message_strings_rewritten"] == 3
    assert other["invalid_message_records"] == 2
    assert other["users_csv_bad_rows"] == 2 and other["orders_csv_bad_rows"] == 1
    assert other["orders_csv_duplicate_ids"] == 1
    assert report["run"]["messages_inserted"] == 5
    assert json.loads((tmp_path / "r1.json").read_text())["run"]["messages_inserted"] == 0
    conn = await asyncpg.connect(fresh_db)
    try:
        assert sorted(r[0] for r in await conn.fetch(
            "SELECT external_id FROM message_attachments")) == ["ME\ufffdlegacy", "ME\ufffdnul"]
        assert await conn.fetchval(
            "SELECT metadata #>> '{twilio,delivery,read}' FROM messages "
            "WHERE external_id = $1", _sid(2)) == "x\ufffd"
        assert await conn.fetchval("SELECT manager_id FROM orders WHERE id = 7") == 32
    finally:
        await conn.close()
