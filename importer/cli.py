"""`beseda import-twilio DIR --users users.csv --orders orders.csv [--dry-run]`.

Exit codes: 0 imported (bad records are counted in the report, never fatal),
1 the import failed (database or file system), 2 bad usage or unreadable export,
3 another importer is running against this database, 4 `--bulk` while a node is
connected to the database, 130 stopped by SIGTERM or SIGINT (the run is marked
`interrupted`; run it again to resume).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import asyncpg

from wsserver import db
from wsserver.config import Settings

from . import bulk, shard
from .export import ConversationPlan, Export, ExportError, page_files, read_bytes
from .load import IMPORT_LOCK_ID, Loader, affected
from .report import Totals, build_report, plan_stats, render_text, write_json
from .storage import LocalStorage

log = logging.getLogger("beseda.importer")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="beseda import-twilio",
        description="Import a Twilio Conversations export (idempotent, resumable).")
    ap.add_argument("dir", type=Path, help="the export folder (conversations/, users/, ...)")
    ap.add_argument("--users", type=Path, help="identity,user_id,role (default DIR/users.csv)")
    ap.add_argument("--orders", type=Path,
                    help="order_id,buyer_id,manager_id,fulfillment_id (default DIR/orders.csv)")
    ap.add_argument("--dry-run", action="store_true",
                    help="read and validate everything, print the report, write nothing")
    ap.add_argument("--report", type=Path,
                    help="write the JSON report here (default: under the data folder)")
    ap.add_argument("--batch-messages", type=_batch_messages, default=5000,
                    help="messages per transaction (default 5000)")
    ap.add_argument("--writers", type=_writers, default=2,
                    help="writers in parallel, each a process with its own connection "
                         "and whole conversations (default 2; 1 writes from this "
                         "process and leaves more CPU to a live server)")
    ap.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                    help="bar on a terminal, plain log lines otherwise (default auto)")
    ap.add_argument("--progress-every", type=float, default=5.0,
                    help="seconds between progress lines (0: after every transaction)")
    ap.add_argument("--bulk", action="store_true",
                    help="first import into a database no node serves: the indexes of "
                         "messages are dropped for the load and built at the end "
                         "(refused while a node is connected; nodes refuse to start "
                         "until they are built)")
    ap.add_argument("--database-url", help="overrides DATABASE_URL")
    ap.add_argument("--data-dir", type=Path, help="overrides BESEDA_DATA_DIR")
    return ap


MAX_WRITERS = 16


def _batch_messages(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return n


def _writers(text: str) -> int:
    n = int(text)
    if not 1 <= n <= MAX_WRITERS:
        raise argparse.ArgumentTypeError(f"from 1 to {MAX_WRITERS}")
    return n


class Progress:
    """A tqdm bar with rate and ETA on a terminal, plain INFO lines otherwise."""

    def __init__(self, total: int, mode: str, every: float) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.total, self.every = mode, total, every
        self.convs = self.msgs = 0
        self.t0 = self.last = time.monotonic()
        self.bar: Any = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="conv", file=sys.stderr, dynamic_ncols=True,
                            desc="import")

    def update(self, convs: int, msgs: int) -> None:
        self.convs += convs
        self.msgs += msgs
        now = time.monotonic()
        if self.bar is not None:
            self.bar.update(convs)
            rate = self.msgs / max(now - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.msgs} msgs, {rate:,.0f} msg/s", refresh=False)
        elif self.mode == "lines" and now - self.last >= self.every:
            self.line(now)

    def line(self, now: float) -> None:
        self.last = now
        elapsed = max(now - self.t0, 1e-9)
        rate = self.msgs / elapsed
        left = self.total - self.convs
        eta = elapsed / self.convs * left if self.convs else float("nan")
        log.info("import.progress conversations=%d/%d messages=%d rate=%.0f msg/s "
                 "elapsed=%.1fs eta=%.0fs rss=%.0fMB", self.convs, self.total, self.msgs,
                 rate, elapsed, eta, _rss_mb())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines":
            self.line(time.monotonic())


def _rss_mb() -> float:
    """Resident set size of this process (Linux), 0 where /proc is not there."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def listing_fingerprint(export: Export) -> tuple[int, str]:
    """(distinct conversations, export id = digest of the conversation list pages)."""
    import hashlib

    h = hashlib.sha256()
    for path in page_files(export.root / "conversations"):
        try:
            h.update(read_bytes(path))
        except OSError:
            continue
    return export.count_conversations(), h.hexdigest()[:32]


def _setup_logging(level: str) -> None:
    root = logging.getLogger("beseda")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper() if level else "INFO")
    root.propagate = False


async def run_async(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    if args.database_url:
        settings = settings.with_(database_url=args.database_url)
    if args.data_dir:
        settings = settings.with_(data_dir=args.data_dir)
    _setup_logging(settings.log_level)
    users = args.users or args.dir / "users.csv"
    orders = args.orders or args.dir / "orders.csv"
    try:
        export = Export(args.dir, users, orders, settings.default_lang)
        export.load_side_files()
    except (ExportError, OSError) as exc:
        log.error("import.bad_export error=%s", exc)
        return 2
    total, export_id = listing_fingerprint(export)
    log.info("import.start dir=%s conversations=%d export_id=%s dry_run=%s",
             args.dir, total, export_id, args.dry_run)
    progress = Progress(total, args.progress, args.progress_every)
    t0 = time.monotonic()
    # SIGTERM and SIGINT end the run like a failure would: the run row says so,
    # the writers are stopped, the connections closed; what committed stays.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, main.cancel)
    if args.dry_run:
        report = _dry_run(export, progress, args.report)
        report["run"].update(export_id=export_id, seconds=round(time.monotonic() - t0, 2))
        progress.close()
        if args.report:
            write_json(report, str(args.report))
        print(render_text(report))
        return 0
    return await _import(args, settings, export, export_id, progress, t0)


def _dry_run(export: Export, progress: Progress, report: Path | None) -> dict[str, Any]:
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
    totals = Totals(report)
    n_msgs = 0
    for rec in export.conversation_records():
        plan = export.plan(rec, "")
        plan.stats["delivery_receipts"] += export.count_receipts(plan.sid)
        totals.add(plan_stats(plan))
        n_msgs += len(plan.messages)
        progress.update(1, len(plan.messages))
    return build_report(totals, export.stats, export.issues, set(),
                        {"dry_run": True, "messages_to_import": n_msgs})


async def _import(args: argparse.Namespace, settings: Settings, export: Export,
                  export_id: str, progress: Progress, t0: float) -> int:
    dsn, embedded = await db.resolve_database_url(settings)
    conn: asyncpg.Connection | None = None
    spare: list[asyncpg.Connection] = []  # a second connection for the bulk builds
    run_id = None
    try:
        await db.migrate(dsn)
        conn = await _connect(dsn)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", IMPORT_LOCK_ID):
            log.error("import.busy another importer is running against this database")
            return 3
        await conn.execute("UPDATE import_runs SET status = 'interrupted', finished_at = now() "
                           "WHERE status = 'running'")
        if args.writers > 1:
            spare.append(await _connect(dsn))
        rebuilt: dict[str, float] = {}
        removed = bulk.Removed()  # messages the bulk build found another chat's sid on
        if not args.bulk and await bulk.pending(conn):
            log.warning("import.bulk_unfinished an earlier --bulk run left indexes to build")
            rebuilt = await bulk.rebuild([conn, *spare], removed)
        deferred: list[str] = []
        if args.bulk:
            await bulk.claim(conn)  # held until this process's session ends
            deferred = await bulk.defer(conn)
        run_id = await conn.fetchval(
            "INSERT INTO import_runs (export_id, source_dir) VALUES ($1, $2) RETURNING id",
            export_id, str(args.dir.resolve()))
        users_new, orders_new = await _upsert_people(conn, export)
        storage_dir = settings.data_dir / "attachments"
        if args.writers > 1:
            results = await shard.run_writers({
                "parent": os.getpid(), "log_level": settings.log_level,
                "dir": str(args.dir), "users": str(export.users_csv),
                "orders": str(export.orders_csv),
                "default_lang": settings.default_lang, "dsn": dsn, "storage": str(storage_dir),
                "export_id": export_id, "run_id": run_id,
                "batch_messages": args.batch_messages}, args.writers, progress)
            counted = [(r["run"], r["phase_s"]) for r in results]
            skipped = sum(r["skipped"] for r in results)
            for r in results:
                export.stats.update(r["stats"])
                export.issues.extend(r["issues"])
                export.unknown_identities.update(r["unknown"])
        else:
            done = {r["conversation_sid"]: r["signature"] for r in await conn.fetch(
                "SELECT conversation_sid, signature FROM import_conversations "
                "WHERE export_id = $1", export_id)}
            loader = Loader(conn, LocalStorage(storage_dir), export_id, run_id,
                            args.batch_messages, on_commit=progress.update)
            await loader.prepare()
            skipped = await _write_all(export, done, loader, progress,
                                       2 * args.batch_messages)
            counted = [(loader.run, dict(loader.phase_s))]
        progress.close()
        t_load = time.monotonic() - t0
        if args.bulk:
            rebuilt = await bulk.rebuild([conn, *spare], removed)
        elif rebuilt:
            # an earlier bulk run's indexes were built before this load: the statistics
            # taken then describe the table without what was just written
            await bulk.analyze(conn)

        path = args.report or settings.data_dir / "import-reports" / f"twilio-run-{run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        totals = Totals(path)
        async with conn.transaction():
            async for row in conn.cursor(
                    "SELECT stats FROM import_conversations WHERE export_id = $1 "
                    "ORDER BY conversation_sid", export_id):
                totals.add(json.loads(row["stats"]))
        seconds = time.monotonic() - t0
        run: dict[str, Any] = {}
        phases: Counter[str] = Counter()
        for counts, phase_s in counted:
            for k, v in counts.items():
                run[k] = run.get(k, 0) + v
            phases.update(phase_s)
        # summed over the writers, which run at the same time
        run["phase_seconds"] = {k: round(v, 2) for k, v in sorted(phases.items())}
        run["writers"] = len(counted)
        if removed.messages:  # refused, as a live-safe run refuses them row by row
            run["messages_rejected"] += len(removed.messages)
            run["attachments_rejected"] += removed.attachments
            if args.bulk:  # this run's own load had counted them in
                run["messages_inserted"] -= len(removed.messages)
                run["attachments_inserted"] -= removed.attachments
                run["replies_linked"] -= removed.replies_unlinked
                run["replies_unlinked"] += removed.replies_unlinked
            export.issues.extend(
                {"kind": "message_rejected", "conversation": r["conversation"],
                 "sid": r["external_id"], "reason": "sid of another chat"}
                for r in removed.messages)
        if args.bulk or rebuilt:
            run["bulk"] = {"deferred": deferred, "rebuilt_seconds": rebuilt,
                           "load_seconds": round(t_load, 2),
                           "rebuild_seconds": round(sum(rebuilt.values()), 2)}
        run.update(dry_run=False, run_id=run_id, export_id=export_id,
                   conversations_skipped_done=skipped, users_inserted=users_new,
                   orders_inserted=orders_new, seconds=round(seconds, 2),
                   messages_per_s=round(run["messages_inserted"] / max(seconds, 1e-9), 1))
        report = build_report(totals, export.stats, export.issues, set(), run)
        await conn.execute(
            "UPDATE import_runs SET status = 'finished', finished_at = now(), report = $2::jsonb "
            "WHERE id = $1", run_id,
            json.dumps({"counts": report["counts"], "other_counts": report["other_counts"],
                        "run": run}, ensure_ascii=False))
        write_json(report, str(path))
        print(render_text(report))
        log.info("import.done run=%s messages=%d seconds=%.1f report=%s", run_id,
                 run["messages_inserted"], seconds, path)
        return 0
    except asyncio.CancelledError:
        log.warning("import.interrupted run=%s by a signal; run it again to resume", run_id)
        await _end_run(conn, run_id, "interrupted")
        return 130
    except bulk.NodesConnected as exc:
        log.error("import.bulk_refused %s: stop the nodes, or import without --bulk", exc)
        return 4
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError,
            bulk.RebuildFailed, shard.WriterFailed) as exc:
        log.error("import.failed run=%s error=%s: %s", run_id, type(exc).__name__, exc)
        await _end_run(conn, run_id, "failed")
        return 1
    finally:
        for c in [*spare, conn]:
            if c is not None and not c.is_closed():
                await c.close()
        if embedded is not None:
            embedded.release()


async def _end_run(conn: asyncpg.Connection | None, run_id: int | None, status: str) -> None:
    """Records how a run ended, if its row and connection are still there."""
    if conn is None or run_id is None or conn.is_closed():
        return
    try:
        await conn.execute("UPDATE import_runs SET status = $2, finished_at = now() "
                           "WHERE id = $1", run_id, status)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        pass


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={
        "application_name": "beseda-importer",
        # A commit lost to a crash is only a conversation not yet marked done:
        # the next run redoes it, so the import need not wait for each fsync.
        "synchronous_commit": "off",
        "statement_timeout": "600000",
        "idle_in_transaction_session_timeout": "600000",
    })


async def _write_all(export: Export, done: dict[str, str], loader: Loader,
                     progress: Any, ahead: int, shard: tuple[int, int] = (0, 1)) -> int:
    """Write the conversations of one shard (all of them by default) with one loader.

    Each transaction carries its conversations' progress rows, so a kill leaves any
    mix of finished conversations behind, which the next run handles like any other.
    The reader thread of `_plans` keeps mapping while the loader writes. Returns the
    count skipped (finished by an earlier run).
    """
    skipped = 0
    async with aclosing(_plans(export, done, ahead, shard)) as plans:
        async for plan in plans:
            if plan is None:
                skipped += 1
                progress.update(1, 0)
            else:
                await loader.add(plan)
    await loader.flush()
    return skipped


_END = object()


class _Budget:
    """How many messages the reader may hold ahead of the writer (bounds memory)."""

    def __init__(self, limit: int) -> None:
        self.cv = threading.Condition()
        self.used = 0
        self.limit = limit
        self.closed = False

    def acquire(self, n: int) -> None:
        with self.cv:
            while self.used > 0 and self.used + n > self.limit and not self.closed:
                self.cv.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self.cv:
            self.used -= n
            self.cv.notify_all()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()


async def _plans(export: Export, done: dict[str, str], ahead: int,
                 shard: tuple[int, int] = (0, 1)) -> AsyncIterator[ConversationPlan | None]:
    """Plans made by a reader thread, up to `ahead` messages ahead of the writer.

    Reading and mapping is Python work; writing is mostly waiting on PostgreSQL. The
    thread runs while the event loop waits, and the message budget bounds memory.
    Yields None for a conversation that an earlier run already finished. With
    `shard` (k, n), only every n-th distinct conversation from the k-th on is read;
    shard 0 counts the listing.
    """
    k, n = shard
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    budget = _Budget(ahead)
    stop = threading.Event()

    def produce() -> None:
        try:
            for i, rec in enumerate(export.conversation_records(count=k == 0)):
                if stop.is_set():
                    return
                if i % n != k:
                    continue
                sig = export.signature(rec)
                if done.get(rec["sid"]) == sig:
                    q.put(None)
                    continue
                plan = export.plan(rec, sig)
                plan.stats["delivery_receipts"] += export.count_receipts(plan.sid)
                budget.acquire(len(plan.messages) + 1)
                q.put(plan)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(exc)
        finally:
            q.put(_END)

    loop = asyncio.get_running_loop()
    # Hand the GIL back to the event loop quickly when PostgreSQL answers.
    sys.setswitchinterval(0.0005)
    thread = threading.Thread(target=produce, name="import-reader", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                item = await loop.run_in_executor(None, q.get)
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
            if item is not None:
                budget.release(len(item.messages) + 1)
    finally:
        stop.set()
        budget.close()
        await loop.run_in_executor(None, thread.join)


async def _upsert_people(conn: asyncpg.Connection, export: Export) -> tuple[int, int]:
    """users.csv and orders.csv into the projections; existing rows are left alone."""
    ids, names, roles = [], [], []
    for ident, (uid, role) in export.users.items():
        ids.append(uid)
        names.append(export.twilio_names.get(ident, ""))
        roles.append(role)
    s1 = await conn.execute(
        """INSERT INTO users (id, name, role)
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])
           ON CONFLICT (id) DO NOTHING""", ids, names, roles)
    o = export.orders
    s2 = await conn.execute(
        """INSERT INTO orders (id, buyer_id, manager_id, fulfillment_id)
           SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
           ON CONFLICT (id) DO NOTHING""",
        [x[0] for x in o], [x[1] for x in o], [x[2] for x in o], [x[3] for x in o])
    export.twilio_names.clear()  # only needed for the names above
    return affected(s1), affected(s2)


def run(argv: list[str]) -> int:
    """Entry point for `beseda import-twilio` (argv without the program and command)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_async(argv))
    return uvloop.run(run_async(argv))
