"""Importer benchmark: messages/s against a raw COPY of the same rows, and peak RSS.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python loadtests/import_bench.py --sizes 500x100,5000x100,50000x100@2
        [--writers 2,1] [--seed 1] [--work /tmp/beseda-import-bench] [--keep]

For each size (conversations x messages per conversation) it generates an export with
../shared/fixtures/make_twilio_export.py, imports it into a new database of its own
embedded PostgreSQL (loopback, temporary folder) with `python -m importer` as a child
process whose RSS it samples every 20 ms, then times a plain COPY of the very rows the
importer wrote (messages and message_attachments) into empty tables without indexes
in the same cluster (three times: the median is the baseline). Every timed phase
starts after a CHECKPOINT, so that no phase pays for the WAL of the one before it.
It also times a second run of the importer (nothing to do). Between the live-safe
import and the COPYs the database is VACUUMed (untimed), and it is dropped before
the bulk import: autovacuum, left to itself, worked on those tables during the next
timed phases (a bulk import took 11.9 s there against 9.4 to 10 s on a quiet
cluster). `SIZE@W` runs that size
with writer counts W (for example `50000x100@2`) instead of --writers.
Writes loadtests/reports/import.md and import.json; removes the exports unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from importer.load import ATT_COLUMNS, MSG_COLUMNS  # noqa: E402
from wsserver import db  # noqa: E402
from wsserver.embedded_pg import EmbeddedPostgres  # noqa: E402
from wsserver.search_index import SearchIndexer  # noqa: E402
from wsserver.store import Store  # noqa: E402


def shared_dir() -> Path:
    env = os.environ.get("BESEDA_SHARED_DIR")
    return Path(env) if env else REPO.parent / "shared"


def generate(out: Path, n: int, m: int, seed: int) -> float:
    if out.exists() and (out / "EXPECTED.json").exists():
        return 0.0
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(shared_dir() / "fixtures" / "make_twilio_export.py"),
                    str(out), "--conversations", str(n), "--messages-per-conversation", str(m),
                    "--seed", str(seed), "--jobs", str(os.cpu_count() or 1)],
                   check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


async def execute(dsn: str, *statements: str) -> float:
    """Runs the statements on a connection of their own; returns their seconds."""
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.monotonic()
        for sql in statements:
            await conn.execute(sql)
        return time.monotonic() - t0
    finally:
        await conn.close()


async def checkpoint(dsn: str) -> None:
    """Flush what earlier phases left dirty, so that the next timed phase starts from
    the same state (without it the raw COPY's time varied 1.9 to 3.5 s between runs of
    the same rows, by whether it met a checkpoint)."""
    await execute(dsn, "CHECKPOINT")


async def run_importer(export: Path, dsn: str, data: Path, report: Path,
                       writers: int, *extra: str) -> dict[str, Any]:
    """Run the importer as a child; wall time and peak RSS sampled with psutil."""
    await checkpoint(dsn)
    cmd = [sys.executable, "-m", "importer", str(export), "--database-url", dsn,
           "--data-dir", str(data), "--progress", "lines", "--progress-every", "30",
           "--report", str(report), "--writers", str(writers), *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    ps = psutil.Process(proc.pid)
    peak = 0
    samples = 0
    while proc.poll() is None:
        try:
            # the importer and its writer processes together
            rss = ps.memory_info().rss
            for child in ps.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, rss)
            samples += 1
        except psutil.Error:
            pass
        await asyncio.sleep(0.02)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"importer failed with {proc.returncode}")
    rep = json.loads(report.read_text())
    return {"wall_s": round(wall, 2), "import_s": rep["run"]["seconds"],
            "messages": rep["run"]["messages_inserted"],
            "attachments": rep["run"]["attachments_inserted"],
            "peak_rss_mb": round(peak / 2**20, 1), "rss_samples": samples,
            "bulk": rep["run"].get("bulk"),
            "counts_ok": rep["counts"]["messages"] == rep["run"]["messages_inserted"]
            or rep["run"]["messages_inserted"] == 0}


RAW_RUNS = 3


async def raw_copy(dsn: str) -> dict[str, Any]:
    """COPY the importer's own rows into empty, index-free tables; time only the COPY.
    Three runs, each after a CHECKPOINT; the median is the baseline."""
    conn = await asyncpg.connect(dsn)
    try:
        msgs = [tuple(r) for r in await conn.fetch(
            f"SELECT {', '.join(MSG_COLUMNS)} FROM messages ORDER BY id")]
        atts = [tuple(r) for r in await conn.fetch(
            f"SELECT id, {', '.join(ATT_COLUMNS)} FROM message_attachments ORDER BY id")]
        runs = []
        for _ in range(RAW_RUNS):
            await conn.execute("CREATE TABLE raw_messages (LIKE messages)")
            await conn.execute("CREATE TABLE raw_attachments (LIKE message_attachments)")
            await conn.execute("CHECKPOINT")
            t0 = time.monotonic()
            async with conn.transaction():
                await conn.copy_records_to_table("raw_messages", records=msgs,
                                                 columns=MSG_COLUMNS)
                await conn.copy_records_to_table("raw_attachments", records=atts,
                                                 columns=("id", *ATT_COLUMNS))
            runs.append(time.monotonic() - t0)
            await conn.execute("DROP TABLE raw_messages; DROP TABLE raw_attachments")
        seconds = sorted(runs)[len(runs) // 2]
        # the floor for our schema: the same COPY into tables with messages' indexes and
        # foreign keys (what any live-safe load has to maintain), in 5,000-row COPYs
        await conn.execute(
            "CREATE TABLE idx_messages (LIKE messages INCLUDING ALL, "
            "FOREIGN KEY (chat_id) REFERENCES chats (id))")
        await conn.execute(
            "CREATE TABLE idx_attachments (LIKE message_attachments INCLUDING ALL, "
            "FOREIGN KEY (message_id) REFERENCES idx_messages (id))")

        async def timed_copy() -> float:
            await conn.execute("CHECKPOINT")
            t0 = time.monotonic()
            async with conn.transaction():
                for i in range(0, len(msgs), 5000):
                    await conn.copy_records_to_table("idx_messages", records=msgs[i:i + 5000],
                                                     columns=MSG_COLUMNS)
                for i in range(0, len(atts), 5000):
                    await conn.copy_records_to_table("idx_attachments",
                                                     records=atts[i:i + 5000],
                                                     columns=("id", *ATT_COLUMNS))
            return time.monotonic() - t0

        indexed = await timed_copy()
        await conn.execute("DROP TABLE idx_attachments; DROP TABLE idx_messages")
    finally:
        await conn.close()
    return {"raw_s": round(seconds, 2), "raw_runs_s": [round(x, 2) for x in runs],
            "raw_rows": len(msgs) + len(atts),
            "raw_messages_per_s": round(len(msgs) / seconds),
            "indexed_copy_s": round(indexed, 2),
            "indexed_copy_messages_per_s": round(len(msgs) / indexed)}


async def index_for_search(dsn: str) -> dict[str, Any]:
    """Drains the search queue the import filled, as a node's indexer does (one
    indexer, batches of 5,000): the time until every imported message is findable."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=Store.connection_init())
    try:
        await checkpoint(dsn)
        t0 = time.monotonic()
        done = await SearchIndexer(Store(pool), batch=5000).drain()
        seconds = time.monotonic() - t0
    finally:
        await pool.close()
    return {"search_index_s": round(seconds, 2), "search_indexed": done,
            "search_index_messages_per_s": round(done / seconds) if seconds else 0}


async def bench_size(pg: EmbeddedPostgres, work: Path, n: int, m: int,
                     seed: int, writers: list[int]) -> list[dict[str, Any]]:
    export = work / f"export-{n}x{m}"
    gen_s = generate(export, n, m, seed)
    results = []
    for w in writers:
        name = f"bench_{n}x{m}_w{w}"
        dsn = await db.recreate_database(pg.dsn, name)
        await db.migrate(dsn)
        data = work / f"data-{n}x{m}"
        shutil.rmtree(data, ignore_errors=True)
        first = await run_importer(export, dsn, data, work / f"report-{n}x{m}.json", w)
        search = await index_for_search(dsn)
        again = await run_importer(export, dsn, data, work / f"report-{n}x{m}-rerun.json", w)
        # what autovacuum would otherwise do to these tables during the timed COPYs
        # and the bulk import below, done now and untimed
        vacuum_s = round(await execute(dsn, "VACUUM (ANALYZE)"), 1)
        raw = await raw_copy(dsn)
        # nothing of it is needed any more: no background work on it either
        await execute(pg.dsn, f'DROP DATABASE IF EXISTS "{name}"')
        # --bulk: the same export into another new database, indexes built at the end
        bulk_name = name + "_bulk"
        bulk_dsn = await db.recreate_database(pg.dsn, bulk_name)
        await db.migrate(bulk_dsn)
        shutil.rmtree(data, ignore_errors=True)
        bulk = await run_importer(export, bulk_dsn, data, work / f"report-{n}x{m}-bulk.json",
                                  w, "--bulk")
        assert bulk["messages"] == first["messages"], "bulk and live imports differ"
        bulk_rate = bulk["messages"] / bulk["import_s"]
        rate = first["messages"] / first["import_s"]
        searchable = first["messages"] / (first["import_s"] + search["search_index_s"])
        out = {"size": f"{n}x{m}", "conversations": n, "messages_per_conversation": m,
               "writers": w, "generate_s": round(gen_s, 1), **first,
               "importer_messages_per_s": round(rate), **raw, **search,
               "searchable_messages_per_s": round(searchable),
               "ratio_raw_over_searchable": round(raw["raw_messages_per_s"] / searchable, 2),
               "ratio_raw_over_importer": round(raw["raw_messages_per_s"] / rate, 2),
               "ratio_indexed_over_importer": round(
                   raw["indexed_copy_messages_per_s"] / rate, 2),
               "bulk_import_s": bulk["import_s"],
               "bulk_load_s": bulk["bulk"]["load_seconds"],
               "bulk_rebuild_s": bulk["bulk"]["rebuild_seconds"],
               "bulk_messages_per_s": round(bulk_rate),
               "bulk_peak_rss_mb": bulk["peak_rss_mb"],
               "ratio_raw_over_bulk": round(raw["raw_messages_per_s"] / bulk_rate, 2),
               "rerun_s": again["import_s"], "rerun_peak_rss_mb": again["peak_rss_mb"],
               "rerun_messages_inserted": again["messages"], "vacuum_untimed_s": vacuum_s,
               "load_avg_1m_after": round(os.getloadavg()[0], 2)}
        print(json.dumps(out), flush=True)
        results.append(out)
        await execute(pg.dsn, f'DROP DATABASE IF EXISTS "{bulk_name}"')
    return results


def write_report(results: list[dict[str, Any]], path_md: Path, note: str) -> None:
    path_md.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU, "
                       f"{round(psutil.virtual_memory().total / 2**30)} GiB RAM",
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    path_md.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": results, "note": note}, indent=1) + "\n")
    lines = [
        "# Twilio importer benchmark",
        "",
        f"Generated by `loadtests/import_bench.py` on {meta['date']} ({meta['machine']}, "
        f"Python {meta['python']}, embedded PostgreSQL 18 with default settings).",
        "",
        "| size | writers | messages | import s | importer msg/s | raw COPY msg/s "
        "| raw / importer | indexed COPY msg/s | indexed / importer "
        "| search indexing msg/s | import + indexing msg/s | raw / that | peak RSS MB "
        "| re-run s | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bulk_lines = [
        "",
        "`--bulk` (a first import into a database no node serves; the secondary indexes "
        "and keys of `messages`, and the foreign key and plain index of "
        "`message_attachments`, dropped for the load and built at the end), the same "
        "export into another new database in the same run:",
        "",
        "| size | writers | messages | bulk import s | of which load s | index builds s "
        "(summed over the connections) | bulk msg/s | raw COPY msg/s | raw / bulk "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['size']} | {r.get('writers', 1)} | {r['messages']:,} | {r['import_s']} "
            f"| {r['importer_messages_per_s']:,} | {r['raw_messages_per_s']:,} "
            f"| {r['ratio_raw_over_importer']}x | {r['indexed_copy_messages_per_s']:,} "
            f"| {r['ratio_indexed_over_importer']}x | {r['search_index_messages_per_s']:,} "
            f"| {r['searchable_messages_per_s']:,} | {r['ratio_raw_over_searchable']}x "
            f"| {r['peak_rss_mb']} | {r['rerun_s']} | {r['load_avg_1m_after']} |")
        if "bulk_import_s" in r:
            bulk_lines.append(
                f"| {r['size']} | {r.get('writers', 1)} | {r['messages']:,} "
                f"| {r['bulk_import_s']} | {r['bulk_load_s']} | {r['bulk_rebuild_s']} "
                f"| {r['bulk_messages_per_s']:,} | {r['raw_messages_per_s']:,} "
                f"| {r['ratio_raw_over_bulk']}x | {r['bulk_peak_rss_mb']} |")
    lines += bulk_lines
    lines += [
        "",
        "- *import s*: the importer's own clock (export read, mapping, COPY, counters, "
        "horizons, progress rows); the process wall time is in the JSON.",
        "- *raw COPY*: the same message and attachment rows the importer wrote, already in "
        "memory, COPYed in one transaction into empty tables made with `LIKE` (no indexes, "
        "no constraints): the floor for getting those bytes into PostgreSQL; the median of "
        "three runs (all three in the JSON).",
        "- Every timed phase (each import, the raw and indexed COPYs, the search indexing) "
        "starts after a CHECKPOINT.",
        "- *indexed COPY*: the same rows again, in 5,000-row COPYs, into tables that carry "
        "the indexes and foreign keys of `messages` / `message_attachments`: the floor for "
        "any load that keeps the live schema intact while `beseda serve` runs.",
        "- *search indexing*: the imported messages' search grams written from the queue "
        "the import filled, by one `SearchIndexer` as a node runs it "
        "(wsserver/search_index.py, batches of 5,000); *import + indexing*: messages over "
        "the import's and the indexing's seconds together, until every message is findable.",
        "- *writers*: `--writers`, database connections writing whole conversations in "
        "parallel (the COPYs above use one).",
        "- *load avg*: the machine's 1-minute load average right after the size's runs.",
        "- *peak RSS*: the importer process and its writer processes together, sampled "
        "every 20 ms with psutil.",
        "- *re-run*: a second run over the same export; every conversation is already "
        "done and nothing is written.",
        "",
        note,
        "",
    ]
    path_md.write_text("\n".join(lines))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="500x100,5000x100")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--writers", default="2",
                    help="comma list of importer --writers values to run per size "
                         "(a size written SIZE@W1/W2 uses its own)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/beseda-import-bench"))
    ap.add_argument("--keep", action="store_true", help="keep exports and the cluster")
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=REPO / "loadtests" / "reports" / "import.md")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    pg = EmbeddedPostgres(args.work / "pg")
    pg.start()
    results = []
    try:
        for size in args.sizes.split(","):
            size, _, own = size.partition("@")
            n, m = (int(x) for x in size.lower().split("x"))
            writers = own.split("/") if own else args.writers.split(",")
            results += await bench_size(pg, args.work, n, m, args.seed,
                                        [int(w) for w in writers])
    finally:
        pg.stop()
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    write_report(results, args.out, args.note)


if __name__ == "__main__":
    asyncio.run(main())
