"""Writers in processes of their own: `--writers N` (N > 1) runs N of them.

Reading an export and mapping it to rows is Python work (JSON pages, dates,
language, attributes: about 9 us a message here), and one process runs it on one
core however many connections it writes with. So each writer is a process with its
own reader thread, its own connection and a share of the conversations: the n-th
distinct conversation of the listing goes to writer n mod N. Conversations are
independent, each is written by one writer only, in index order, with its progress
row in the transaction of its last messages, exactly as with one writer; the rows
are the same whatever N is.

The parent holds the importer's advisory lock and the run row, starts the writers,
shows their progress and merges what they counted; the listing is counted by
writer 0 only. A writer dies with its parent (PR_SET_PDEATHSIG on Linux, and a
check of its parent pid between conversations), so a killed import leaves no writer
behind to race the next run.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("beseda.importer")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the parent-pid checks below still stop it
    if os.getppid() != parent:
        os._exit(1)


class _Progress:
    """What the writer loop reports, sent to the parent."""

    def __init__(self, events: Any, parent: int) -> None:
        self.events = events
        self.parent = parent

    def update(self, convs: int, msgs: int) -> None:
        if os.getppid() != self.parent:
            os._exit(1)
        self.events.put(("progress", convs, msgs))


def worker(spec: dict[str, Any], events: Any) -> None:
    """Entry point of one writer process."""
    _die_with_parent(spec["parent"])
    from .cli import _setup_logging

    _setup_logging(spec["log_level"])
    try:
        import uvloop

        result = uvloop.run(_work(spec, events))
    except BaseException as exc:  # reported to the parent, which stops the others
        events.put(("failed", spec["shard"], f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    events.put(("done", spec["shard"], result))


async def _work(spec: dict[str, Any], events: Any) -> dict[str, Any]:
    from .cli import _connect, _write_all
    from .export import Export
    from .load import Loader
    from .storage import LocalStorage

    export = Export(Path(spec["dir"]), Path(spec["users"]), Path(spec["orders"]),
                    spec["default_lang"])
    export.load_side_files()
    side_stats, side_issues = Counter(export.stats), len(export.issues)
    progress = _Progress(events, spec["parent"])
    conn = await _connect(spec["dsn"])
    try:
        done = {r["conversation_sid"]: r["signature"] for r in await conn.fetch(
            "SELECT conversation_sid, signature FROM import_conversations "
            "WHERE export_id = $1", spec["export_id"])}
        loader = Loader(conn, LocalStorage(Path(spec["storage"])), spec["export_id"],
                        spec["run_id"], spec["batch_messages"], on_commit=progress.update)
        await loader.prepare()
        skipped = await _write_all(export, done, loader, progress,
                                   2 * spec["batch_messages"],
                                   (spec["shard"], spec["shards"]))
    finally:
        await conn.close()
    stats = export.stats.copy()
    stats.subtract(side_stats)  # the side files are counted by the parent
    return {"run": loader.run, "phase_s": dict(loader.phase_s), "skipped": skipped,
            "stats": {k: v for k, v in stats.items() if v},
            "issues": export.issues[side_issues:],
            "unknown": sorted(export.unknown_identities)}


async def run_writers(spec: dict[str, Any], n: int, progress: Any) -> list[dict[str, Any]]:
    """Runs n writer processes to the end; their results in shard order. A writer that
    fails stops the others, and the failure is raised."""
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    procs = []
    for k in range(n):
        p = ctx.Process(target=worker, args=({**spec, "shard": k, "shards": n}, events),
                        name=f"import-writer-{k}", daemon=True)
        p.start()
        procs.append(p)
    loop = asyncio.get_running_loop()
    results: dict[int, dict[str, Any]] = {}
    failure = ""
    try:
        while len(results) < n and not failure:
            try:
                event = await loop.run_in_executor(None, events.get, True, 0.5)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    failure = f"{dead[0].name} exited with {dead[0].exitcode}"
                continue
            if event[0] == "progress":
                progress.update(event[1], event[2])
            elif event[0] == "done":
                results[event[1]] = event[2]
            else:
                failure = f"import-writer-{event[1]}: {event[2]}"
    finally:
        # a failure, or this task cancelled (a signal): the others stop now
        stop_all = failure or len(results) < n
        for p in procs:
            if stop_all and p.is_alive():
                p.terminate()
            await loop.run_in_executor(None, p.join, 30)
        events.close()
    if failure:
        raise WriterFailed(failure)
    return [results[k] for k in range(n)]


class WriterFailed(Exception):
    """a writer process failed"""
