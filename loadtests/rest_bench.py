"""REST adapter benchmark: a generated marketplace (20,000 chats, 2,000,000
messages, one manager in 3,000 chats), `beseda serve` in a subprocess, and for the
chat list, search and get-chat both the HTTP endpoint and the plain SQL behind it,
measured in the same run with the same concurrency. Writes
loadtests/reports/rest.md and rest.json.

    .venv/bin/python -m loadtests.rest_bench [--scale 1.0] [--requests 1000]

Uses its own embedded PostgreSQL in a temporary folder (or DATABASE_URL), and only
127.0.0.1. Every loop is bounded by a request count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from wsserver import db
from wsserver.app import IDLE_CONNECTION_S
from wsserver.auth import mint
from wsserver.chatlist import _DECORATE, _DETAIL_SQL, _LIST_SQL, _VISIBLE
from wsserver.config import Settings
from wsserver.embedded_pg import EmbeddedPostgres
from wsserver.search import parse
from wsserver.store import Store

REPORTS = Path(__file__).resolve().parent / "reports"
SECRET = "bench-secret-" + "b" * 40
MANAGER = 1
CONCURRENCY = 8
LEVELS = (1, CONCURRENCY)
# The polling form of get-chat: this many buyers, each asking again and again for
# its chat with the token its app holds (as the legacy apps poll).
POLLERS = 200

# Indexes dropped during the bulk load and built once afterwards (much faster).
_DEFERRED_INDEXES = {
    "message_grams_idx": "CREATE INDEX message_grams_idx ON message_grams USING gin "
    "(string_to_array(grams, ' '))",
    "messages_chat_live_seq_idx": "CREATE INDEX messages_chat_live_seq_idx ON messages "
    "(chat_id, seq DESC) WHERE deleted_at IS NULL",
    "messages_chat_rev_idx": "CREATE INDEX messages_chat_rev_idx ON messages (chat_id, rev)",
}

_VOCAB = {
    "ru": ["Здравствуйте", "заказ", "доставка", "оплата", "готов", "когда", "спасибо",
           "посылка", "склад", "размер", "цвет", "образец", "счёт", "возврат", "скидка"],
    "en": ["hello", "order", "delivery", "payment", "ready", "when", "thanks", "parcel",
           "warehouse", "size", "colour", "sample", "invoice", "refund", "discount"],
    "zh": ["您好", "订单", "发货", "付款", "准备好", "什么时候", "谢谢", "包裹", "仓库", "尺寸",
           "颜色", "样品", "发票", "退款", "折扣"],
}


def _arr(words: list[str]) -> str:
    return "(ARRAY[" + ",".join("'" + w.replace("'", "''") + "'" for w in words) + "])"


def generation_sql(chats: int, per_chat: int, users: int) -> list[tuple[str, str]]:
    """(label, statement) pairs that build the dataset with generate_series."""
    ru, en, zh = (_arr(_VOCAB[k]) for k in ("ru", "en", "zh"))
    m_chats = min(3000, chats)
    return [
        ("users", f"""
            INSERT INTO users (id, name, role, locale)
            SELECT i,
                   CASE i % 3 WHEN 0 THEN 'Иван Петров ' || i WHEN 1 THEN 'John Smith ' || i
                        ELSE '李伟 ' || i END,
                   CASE WHEN i <= 60 THEN 'manager' WHEN i % 2 = 0 THEN 'buyer' ELSE 'client' END,
                   (ARRAY['ru','en','zh'])[1 + i % 3]
              FROM generate_series(1, {users}) AS i"""),
        ("orders", f"""
            INSERT INTO orders (id, buyer_id, manager_id, fulfillment_id)
            SELECT i, 100 + (i * 7919) % ({users} - 100),
                   CASE WHEN i <= {m_chats} THEN {MANAGER} ELSE 2 + i % 59 END,
                   CASE WHEN i % 4 = 0 THEN NULL ELSE 500000 + i END
              FROM generate_series(1, {chats * 3 // 4}) AS i"""),
        ("chats", f"""
            INSERT INTO chats (id, type, "group", name, order_id, last_seq, rev,
                               created_at, updated_at, last_message_at)
            SELECT i, 'group', CASE WHEN i % 10 = 0 THEN 'support' ELSE 'order' END,
                   CASE i % 3 WHEN 0 THEN 'Заказ №' || i WHEN 1 THEN 'Order ' || i || ' delivery'
                        ELSE '订单 ' || i || ' 深圳' END,
                   CASE WHEN i <= {chats * 3 // 4} THEN i END, {per_chat}, {per_chat},
                   now() - interval '90 days',
                   now() - make_interval(secs => (i * 7727) % 7776000),
                   now() - make_interval(secs => (i * 7727) % 7776000)
              FROM generate_series(1, {chats}) AS i"""),
        ("participants", f"""
            INSERT INTO chat_participants (chat_id, user_id, role, last_read_seq, delivered_seq)
            SELECT c, u, 'member', {per_chat} - (c % 7), {per_chat}
              FROM generate_series(1, {chats}) AS c,
                   LATERAL (VALUES (100 + (c * 7919) % ({users} - 100)),
                                   (CASE WHEN c <= {m_chats} THEN {MANAGER} ELSE 2 + c % 59 END))
                           AS p(u)"""),
        ("messages", f"""
            INSERT INTO messages (id, chat_id, seq, rev, created_rev, user_id, type, content,
                                  lang, message_key, created_at)
            SELECT (c - 1) * {per_chat} + s, c, s, s, s,
                   CASE WHEN s % 2 = 0 THEN 100 + (c * 7919) % ({users} - 100)
                        ELSE CASE WHEN c <= {m_chats} THEN {MANAGER} ELSE 2 + c % 59 END END,
                   'text',
                   jsonb_build_object(l, t), l, 'k' || s,
                   now() - interval '90 days' + make_interval(secs => s * 60)
              FROM generate_series(1, {chats}) AS c, generate_series(1, {per_chat}) AS s,
                   LATERAL (SELECT (ARRAY['ru','en','zh'])[1 + (c + s) % 3] AS l) AS pick,
                   LATERAL (SELECT CASE pick.l
                       WHEN 'ru' THEN {ru}[1 + (c * s) % 15] || ' ' || {ru}[1 + (c + 3 * s) % 15]
                                      || ' по заказу ' || c || ', ' || {ru}[1 + (s * 11) % 15]
                       WHEN 'en' THEN {en}[1 + (c * s) % 15] || ' ' || {en}[1 + (c + 3 * s) % 15]
                                      || ' for order ' || c || ', ' || {en}[1 + (s * 11) % 15]
                       ELSE {zh}[1 + (c * s) % 15] || {zh}[1 + (c + 3 * s) % 15] || '，订单'
                            || c || {zh}[1 + (s * 11) % 15] END AS t) AS body"""),
        # What the nodes' search indexers would write (wsserver/search_index.py):
        # beseda_grams gives the same grams as its Python twin (tests/test_search_index.py).
        ("search grams", """
            INSERT INTO message_grams (message_id, rev, grams)
            SELECT id, rev, array_to_string(ARRAY(
                       SELECT DISTINCT unnest(beseda_grams(beseda_message_text(content)))), ' ')
              FROM messages"""),
        ("chat last messages", f"""
            UPDATE chats SET last_message_id = (id - 1) * {per_chat} + {per_chat}"""),
        ("sequences", """
            SELECT setval(pg_get_serial_sequence('messages', 'id'), (SELECT max(id) FROM messages)),
                   setval(pg_get_serial_sequence('chats', 'id'), (SELECT max(id) FROM chats))"""),
    ]


async def build_dataset(dsn: str, scale: float) -> dict[str, Any]:
    chats = max(200, int(20_000 * scale))
    per_chat = 100
    users = max(400, int(10_000 * scale))
    timings: dict[str, float] = {}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET session_replication_role = replica")  # no triggers, no FK checks
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute("SET max_parallel_maintenance_workers = 2")
        for name in _DEFERRED_INDEXES:
            await conn.execute(f"DROP INDEX IF EXISTS {name}")
        for label, sql in generation_sql(chats, per_chat, users):
            t0 = time.perf_counter()
            await conn.execute(sql)
            timings[label] = round(time.perf_counter() - t0, 1)
            print(f"  {label}: {timings[label]} s", flush=True)
        for name, sql in _DEFERRED_INDEXES.items():
            t0 = time.perf_counter()
            await conn.execute(sql)
            timings[f"index {name}"] = round(time.perf_counter() - t0, 1)
            print(f"  index {name}: {timings[f'index {name}']} s", flush=True)
        t0 = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        timings["vacuum analyze"] = round(time.perf_counter() - t0, 1)
        counts = {
            t: await conn.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("chats", "messages", "users", "orders", "chat_participants")
        }
        counts["manager_chats"] = await conn.fetchval(
            f"WITH {_VISIBLE} SELECT count(*) FROM vis", MANAGER, True
        )
    finally:
        await conn.close()
    return {"counts": counts, "timings_s": timings}


class LightClient:
    """A minimal HTTP/1.1 keep-alive client (GET only), one connection per worker:
    the load generator shares the machine's two cores with the server and
    PostgreSQL, so it must cost little (httpx costs more than the server does)."""

    def __init__(self, base_url: str) -> None:
        host, _, port = base_url.removeprefix("http://").rstrip("/").partition(":")
        self.host, self.port = host, int(port)
        self._free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str, params: dict[str, Any], token: str) -> tuple[int, bytes]:
        if self._free:
            try:
                return await self._get(self._free.pop(), path, params, token)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the server closed an idle keep-alive connection: open a new one
        conn = await asyncio.open_connection(self.host, self.port)
        return await self._get(conn, path, params, token)

    async def _get(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str,
        params: dict[str, Any], token: str,
    ) -> tuple[int, bytes]:
        from urllib.parse import urlencode

        reader, writer = conn
        target = path + ("?" + urlencode(params) if params else "")
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self._free.append(conn)
        return status, body

    async def close(self) -> None:
        for _, writer in self._free:
            writer.close()
        self._free.clear()


def _stats(latencies: list[float], wall_s: float) -> dict[str, float]:
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return {
        "requests": len(lat),
        "rps": round(len(lat) / wall_s, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }


async def _drive(n: int, call: Any, concurrency: int = CONCURRENCY) -> dict[str, float]:
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t0)

    await call(-1)  # warm up caches and prepared statements
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _stats(latencies, time.perf_counter() - t0)


class Scenario:
    def __init__(self, name: str, path: str, token: str, params: Any, sql: Any,
                 warm: int = 0) -> None:
        self.name, self.path, self.token, self.params, self.sql = name, path, token, params, sql
        self.warm = warm  # untimed requests first (over HTTP), so their tokens are known


async def run_scenarios(
    base_url: str, store: Store, scenarios: list[Scenario], n: int
) -> list[dict[str, Any]]:
    results = []
    http = LightClient(base_url)
    try:
        for sc in scenarios:

            async def via_http(i: int, sc: Scenario = sc) -> None:
                status, body = await http.get(sc.path, sc.params(i), sc.token)
                if status != 200:
                    raise RuntimeError(f"{sc.name}: http {status} {body[:200]!r}")

            async def via_sql(i: int, sc: Scenario = sc) -> None:
                async with store.connection() as conn:
                    await sc.sql(conn, i)

            results += await _measure(sc.name, n, via_http, via_sql)
    finally:
        await http.close()
    return results


def scenarios(settings: Settings, counts: dict[str, Any]) -> list[Scenario]:
    chats = counts["chats"]
    mtoken = mint(settings, MANAGER, "manager", ttl_s=7200)

    def buyer_of(chat: int) -> int:
        users = counts["users"]
        return 100 + (chat * 7919) % (users - 100)

    list_args = lambda i: (MANAGER, True, "ru", "active", None, 51, ((i % 5)) * 50)  # noqa: E731

    async def list_sql(conn: asyncpg.Connection, i: int) -> None:
        await conn.fetchrow("SELECT locale, is_demo FROM users WHERE id = $1", MANAGER)
        await conn.fetch(_LIST_SQL, *list_args(i))

    words = ["доставка", "invoice", "订单", "发货", "склад", "refund"]

    def search_sql_for(role: str, user: Any) -> Any:
        """The statements the manager search runs, in order: the same ChatList
        code on a plain connection (its walk decides how many statements run),
        without the HTTP layer and the response's JSON."""
        from wsserver import chatlist as cl

        lister = cl.ChatList(None)  # type: ignore[arg-type]

        async def run(conn: asyncpg.Connection, i: int) -> None:
            uid = user(i)
            q = parse(words[max(i, 0) % len(words)])
            who = cl.Viewer(uid, role)
            await conn.fetchrow("SELECT locale, is_demo FROM users WHERE id = $1", uid)
            ids = await lister._order_page_ids(conn, who, q, cl.Page(1, 50))
            rows = await conn.fetch(
                f"WITH page AS (SELECT c.* FROM chats c WHERE c.id = ANY($2::bigint[])) {_DECORATE}",
                uid, ids, "ru",
            )
            await conn.fetch(
                "SELECT id, buyer_id, manager_id, fulfillment_id FROM orders WHERE id = ANY($1)",
                [r["order_id"] for r in rows if r["order_id"] is not None],
            )
        return run

    def chat_of(i: int) -> int:
        return 1 + (i * 104729) % chats

    async def get_chat_sql(conn: asyncpg.Connection, i: int) -> None:
        c = chat_of(i)
        await conn.fetchrow(_DETAIL_SQL, buyer_of(c), False, c, "ru", 50)

    buyer_tokens: dict[int, str] = {}

    def btoken(uid: int, nonce: str | None = None) -> str:
        """The buyer's token, the same one each time; with a nonce, a new one."""
        if nonce is not None:
            return mint(settings, uid, "buyer", ttl_s=7200, extra={"jti": nonce})
        if uid not in buyer_tokens:
            buyer_tokens[uid] = mint(settings, uid, "buyer", ttl_s=7200)
        return buyer_tokens[uid]

    get_chat = Scenario("buyer get-chat (50 messages)", "/api/v1/buyer/chat/get-chat", "",
                        lambda i: {"chat_id": chat_of(max(i, 0))}, get_chat_sql)

    async def poll_chat_sql(conn: asyncpg.Connection, i: int) -> None:
        await get_chat_sql(conn, max(i, 0) % POLLERS)

    polling = Scenario(f"buyer get-chat, polling ({POLLERS} buyers, tokens reused)",
                       "/api/v1/buyer/chat/get-chat", "",
                       lambda i: {"chat_id": chat_of(max(i, 0) % POLLERS)}, poll_chat_sql,
                       warm=POLLERS)
    return [
        Scenario("manager chat list (3,000 chats, page of 50)", "/api/v1/manager/chat", mtoken,
                 lambda i: {"page": 1 + (max(i, 0) % 5)}, list_sql),
        Scenario("manager text search (3,000 chats)", "/api/v1/manager/chat/search", mtoken,
                 lambda i: {"query": words[max(i, 0) % len(words)]},
                 search_sql_for("manager", lambda i: MANAGER)),
        get_chat,
        polling,
    ], btoken, buyer_of  # type: ignore[return-value]


async def main_async(args: argparse.Namespace) -> int:
    keep = Path(args.keep).resolve() if args.keep else None
    tmp = keep or Path(tempfile.mkdtemp(prefix="beseda-bench-"))
    pg: EmbeddedPostgres | None = None
    server: subprocess.Popen[bytes] | None = None
    try:
        if os.environ.get("DATABASE_URL"):
            admin = os.environ["DATABASE_URL"]
        else:
            pg = EmbeddedPostgres(tmp / "pg")
            pg.start()
            admin = pg.dsn
        dsn = await db.ensure_database(admin, "beseda_bench")
        await db.migrate(dsn)
        saved = tmp / "dataset.json"
        if keep is not None and saved.exists():
            data = json.loads(saved.read_text())
            print("reusing the dataset in", tmp, flush=True)
        else:
            print("generating dataset", flush=True)
            t0 = time.perf_counter()
            data = await build_dataset(dsn, args.scale)
            data["generate_total_s"] = round(time.perf_counter() - t0, 1)
            if keep is not None:
                saved.write_text(json.dumps(data))
        print(f"dataset {data['counts']} in {data['generate_total_s']} s", flush=True)

        env = {**os.environ, "DATABASE_URL": dsn, "BESEDA_JWT_SECRET": SECRET,
               "BESEDA_DATA_DIR": str(tmp / "data"), "BESEDA_LOG_LEVEL": "WARNING"}
        env.pop("BESEDA_TRANSLATE_PROVIDER", None)
        beseda = Path(sys.executable).parent / "beseda"
        server = subprocess.Popen(
            [str(beseda), "serve", "--host", "127.0.0.1", "--ws-port", "0", "--http-port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert server.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), 120)
        base_url = line.decode().split()[-1]
        print(f"server at {base_url} (pid {server.pid})", flush=True)

        settings = Settings(jwt_secret=SECRET, data_dir=tmp / "data")
        # Configured as the node's pool is (wsserver/app.py): the same codecs, no
        # reset query when a connection comes back, which the endpoint never runs,
        # and connections kept by a store, as the node's requests get theirs.
        pool = await asyncpg.create_pool(dsn, min_size=CONCURRENCY, max_size=CONCURRENCY,
                                         init=Store.connection_init(),
                                         reset=Store.connection_reset(),
                                         **db.connect_kwargs(settings))
        store = Store(pool, keep_idle_s=IDLE_CONNECTION_S)
        results: list[dict[str, Any]] = []
        try:
            results += await _run_all(args, base_url, store, settings, data, "beseda serve")
            server.terminate()
            server.wait(timeout=20)
            server = None

            # The same node in this process: no extra process hop per request, so
            # the difference to SQL is the adapter's own work.
            from wsserver.app import Node

            node = Node(settings.with_(database_url=dsn, ws_port=0, http_port=0,
                                       host="127.0.0.1"))
            await node.start()
            try:
                results += await _run_all(
                    args, f"http://127.0.0.1:{node.http_port}", store, settings, data, "in-process"
                )
            finally:
                await node.stop(timeout=5)
        finally:
            await store.close()
            await pool.close()
        report = {
            "dataset": data, "concurrency": CONCURRENCY, "requests_per_scenario": args.requests,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg": [round(x, 1) for x in os.getloadavg()]},
            "results": results,
        }
        write_report(report)
        return 0
    finally:
        if server is not None:
            server.terminate()
            with contextlib.suppress(Exception):
                server.wait(timeout=20)
        if pg is not None:
            pg.stop(mode="fast")
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


async def _run_all(
    args: argparse.Namespace, base_url: str, store: Store, settings: Settings,
    data: dict[str, Any], server: str,
) -> list[dict[str, Any]]:
    print(f"server: {server}", flush=True)
    scs, btoken, buyer_of = scenarios(settings, data["counts"])  # type: ignore[misc]
    results: list[dict[str, Any]] = []
    for sc in scs:
        if args.only and args.only not in sc.name:
            continue
        n = args.requests if "search" not in sc.name else max(50, args.requests // 4)
        if sc.token:
            results += await run_scenarios(base_url, store, [sc], n)
        else:
            results += await _per_user_get_chat(base_url, store, sc, n, btoken, buyer_of)
    for r in results:
        r["server"] = server
    return results


async def _per_user_get_chat(
    base_url: str, store: Store, sc: Scenario, n: int, btoken: Any, buyer_of: Any,
) -> list[dict[str, Any]]:
    http = LightClient(base_url)
    # Without warm-up requests, every request of a timed pass carries a token the
    # server has not seen: minted for that pass before it starts, because minting
    # is the marketplace's work, not the adapter's (it cost the load client about
    # as much CPU as PyJWT's check costs the server).
    fresh: dict[int, str] = {}
    passes = itertools.count()

    def mint_fresh(count: int) -> None:
        p = next(passes)
        fresh.clear()
        for i in range(-1, count):
            fresh[i] = btoken(buyer_of(sc.params(i)["chat_id"]), nonce=f"{p}-{i}")

    async def via_http(i: int) -> None:
        c = sc.params(i)["chat_id"]
        token = btoken(buyer_of(c)) if sc.warm else fresh[i]
        status, body = await http.get(sc.path, {"chat_id": c}, token)
        if status != 200:
            raise RuntimeError(f"get-chat: http {status} {body[:200]!r}")

    async def via_sql(i: int) -> None:
        async with store.connection() as conn:
            await sc.sql(conn, max(i, 0))

    try:
        if sc.warm:
            await _drive(sc.warm, via_http, 1)
        return await _measure(sc.name, n, via_http, via_sql,
                              before_http=None if sc.warm else mint_fresh)
    finally:
        await http.close()


async def _measure(
    name: str, n: int, via_http: Any, via_sql: Any, before_http: Any = None
) -> list[dict[str, Any]]:
    out = []
    for level in LEVELS:
        count = n if level > 1 else max(50, n // 4)
        # One untimed pass of the SQL over the same requests first: the timed REST
        # and SQL passes then both read pages PostgreSQL has cached, rather than
        # REST paying for the first reads and SQL reading what REST just cached.
        await _drive(count, via_sql, level)
        if before_http is not None:
            before_http(count)
        rest = await _drive(count, via_http, level)
        sql = await _drive(count, via_sql, level)
        ratio = round(rest["p50_ms"] / sql["p50_ms"], 2) if sql["p50_ms"] else None
        out.append({"scenario": name, "concurrency": level, "rest": rest, "sql": sql,
                    "p50_ratio": ratio,
                    "rps_ratio": round(sql["rps"] / rest["rps"], 2) if rest["rps"] else None})
        print(f"  {name} c={level}: rest {rest} sql {sql} ratio {ratio}", flush=True)
    return out


def write_report(report: dict[str, Any]) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "rest.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    c = report["dataset"]["counts"]
    lines = [
        "# REST adapter benchmark",
        "",
        f"Dataset: {c['chats']:,} chats, {c['messages']:,} messages, {c['users']:,} users, "
        f"{c['orders']:,} orders; the measured manager sees {c['manager_chats']:,} chats. "
        f"Generated with generate_series in {report['dataset']['generate_total_s']} s "
        "(indexes built after the load).",
        "",
        f"Load: {report['requests_per_scenario']} requests per scenario (search: a quarter) at {report['concurrency']} "
        "concurrent (a quarter of that, at least 50, one at a time), from one client process on 127.0.0.1 against `beseda serve` "
        f"(one process, uvloop) on a {report['machine']['cpus']}-core machine that also runs "
        "PostgreSQL and the client. \"SQL\" is the same statements the endpoint runs "
        "(auth lookups included), sent over asyncpg with the same concurrency, in the same run, "
        "from a pool configured as the node's (no reset query on release), its connections "
        "kept and handed out again by a `Store` as the node's requests get theirs. Before each pair, "
        "one untimed SQL pass over the same requests warms PostgreSQL's cache for both sides.",
        "",
        "Two forms of get-chat: each request with a token the server has not seen yet "
        "(verified by PyJWT on every request: the worst case; the tokens of a timed pass are "
        "minted before it starts, new for each pass), and polling, as the "
        f"legacy apps do: {POLLERS} buyers asking again and again with the token their app "
        "holds, each having asked once before the timed pass (the node remembers a verified "
        "token for up to 5 minutes, never past its expiry: docs/rest.md).",
        "",
        "Two servers: `beseda serve` in its own process (as deployed; each request crosses one "
        "more process than its SQL does), and the same node inside the load process, where the "
        "difference to SQL is the adapter's own work (HTTP, JWT, routing, row shaping, JSON). "
        f"Load average during the run: {report['machine']['loadavg']} (the machine was shared "
        "with other jobs, so absolute figures are noisy; REST and SQL ran back to back).",
        "",
        "| server | scenario | conc. | REST req/s | REST p50 ms | REST p99 ms | SQL req/s | SQL p50 ms "
        "| SQL p99 ms | p50 REST/SQL | req/s SQL/REST |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        a, s = r["rest"], r["sql"]
        lines.append(
            f"| {r['server']} | {r['scenario']} | {r['concurrency']} | {a['rps']} | {a['p50_ms']} | {a['p99_ms']} | {s['rps']} | "
            f"{s['p50_ms']} | {s['p99_ms']} | {r['p50_ratio']}x | {r['rps_ratio']}x |"
        )
    lines += ["", "Generation steps (seconds):", ""]
    lines += [f"- {k}: {v}" for k, v in report["dataset"]["timings_s"].items()]
    lines.append("")
    (REPORTS / "rest.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 20,000 chats, 2M messages")
    ap.add_argument("--requests", type=int, default=1000, help="requests per scenario and side")
    ap.add_argument("--keep", metavar="DIR",
                    help="keep the database in DIR and reuse it on the next run")
    ap.add_argument("--only", help="run only scenarios whose name contains this")
    args = ap.parse_args()
    import uvloop

    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
