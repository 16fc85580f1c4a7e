"""Servers the scenario can drive, behind one small interface.

A target starts its server (and whatever the server needs: PostgreSQL, Valkey) on
127.0.0.1, creates `users` users in chats of `group`, tells the load client how to open
each user's socket (`specs`) and which codec it speaks, and names the processes whose
RSS and CPU count as "server" (`server_pids`) and as its helpers (`aux_pids`: the
database, the bus). Each scenario gets a fresh server and fresh state.

Targets: `raw` (the ceiling, loadtests/raw_server.py), `beseda` (`beseda serve`),
`socketio` (python-socketio with its Redis manager on an embedded Valkey,
loadtests/sio_server.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from .client import SockSpec

LOOPBACK = "127.0.0.1"
# No proxy, whatever the environment says: every request here goes to 127.0.0.1.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Environment variables a server must not inherit: they could point it at the
# machine's own PostgreSQL/Redis or change what is measured.
_SCRUB_PREFIXES = ("BESEDA_", "DATABASE_URL", "REDIS_URL", "PG", "VALKEY_", "http_proxy",
                   "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "LOADTEST_")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with _http.open(f"http://{LOOPBACK}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def wait_tcp(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listened on {LOOPBACK}:{port} within {timeout}s")


def tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


class ServerProcess:
    """A server subprocess, optionally under `py-spy record`; stopped by its own PID."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path,
                 profile_to: Path | None = None) -> None:
        self.log_path = log
        self.profile_to = profile_to
        self.profiler: subprocess.Popen[bytes] | None = None
        self._log = open(log, "ab")
        if profile_to is not None:
            pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            full = [pyspy, "record", "--nonblocking", "-r", "100", "-f", "raw",
                    "-o", str(profile_to), "--", *cmd]
            self.profiler = subprocess.Popen(full, env=env, stdout=self._log,
                                             stderr=subprocess.STDOUT)
            self.proc = self.profiler
            self.pid = self._child_of(self.profiler.pid)
        else:
            self.proc = subprocess.Popen(cmd, env=env, stdout=self._log,
                                         stderr=subprocess.STDOUT)
            self.pid = self.proc.pid

    @staticmethod
    def _child_of(pid: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = psutil.Process(pid).children()
            if kids:
                return kids[0].pid
            time.sleep(0.05)
        raise RuntimeError("py-spy did not start the server")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in tree(self.pid)]

    def stop(self, timeout: float = 20.0) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            psutil.Process(self.pid).wait(timeout)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=60 if self.profiler else timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def profile_top(path: Path, n: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    if not path.exists():
        return {"error": "no profile written"}
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        total += c
        frames = [_func(f) for f in stack.split(";")]
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    if not total:
        return {"error": "empty profile"}

    def top(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(f, round(100.0 * c / total, 2)) for f, c in counter.most_common(n)]

    return {"samples": total, "self": top(self_c), "inclusive": top(incl)}


def _func(frame: str) -> str:
    # "name (path/file.py:123)" -> "name (file.py)"; samples of one function add up.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(where.split('/')[-2:])})"


# ---------------------------------------------------------------------------- targets


class Target(ABC):
    name: str = ""
    codec: str = "json"
    # Settings changed from the server's defaults for the benchmark, shown in the report.
    notes: list[str] = []

    def __init__(self, work: Path) -> None:
        self.work = work
        self.server: ServerProcess | None = None
        self.profile_path: Path | None = None
        self.runs = 0

    def setup(self) -> None:  # noqa: B027
        """Start what lives for the whole run (database, bus)."""

    def teardown(self) -> None:  # noqa: B027
        """Stop what `setup` started."""

    @abstractmethod
    def start(self, users: int, group: int, profile: bool) -> None: ...

    @abstractmethod
    def specs(self) -> list[SockSpec]: ...

    def server_pids(self) -> list[int]:
        return self.server.pids if self.server else []

    def aux_pids(self) -> list[int]:
        return []

    def metrics_text(self) -> str | None:
        return None

    def stop(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.profile_path is not None:
            out["profile"] = profile_top(self.profile_path)
            out["profile"]["file"] = str(self.profile_path)
            self.profile_path = None
        return out

    def _profile_file(self, group: int, profile: bool) -> Path | None:
        if not profile:
            return None
        self.profile_path = self.work / f"profile-{self.name}-g{group}.txt"
        self.profile_path.unlink(missing_ok=True)
        return self.profile_path

    @staticmethod
    def layout(users: int, group: int) -> list[tuple[int, int]]:
        """(user index, chat index): users 0..n-1 in consecutive chats of `group`."""
        return [(u, u // group) for u in range(users)]


class RawTarget(Target):
    name = "raw"
    notes = ["no storage, no auth, compression off, no backpressure (websockets.broadcast)"]

    def start(self, users: int, group: int, profile: bool) -> None:
        self.port = free_port()
        self.users, self.group = users, group
        self.server = ServerProcess(
            [sys.executable, "-m", "loadtests.raw_server", "--host", LOOPBACK,
             "--port", str(self.port)],
            clean_env(PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
            self.work / f"server-{self.name}.log",
            self._profile_file(group, profile),
        )
        wait_tcp(self.port, 30, self.server.proc)

    def specs(self) -> list[SockSpec]:
        return [
            SockSpec(u + 1, c + 1, f"ws://{LOOPBACK}:{self.port}/ws?user={u + 1}&chats={c + 1}")
            for u, c in self.layout(self.users, self.group)
        ]


class BesedaTarget(Target):
    """`beseda serve` on an embedded PostgreSQL started for this run."""

    name = "beseda"
    secret = "loadtest-secret-" + "k" * 32
    overrides = {
        "BESEDA_COMPRESSION": "0",
        "BESEDA_RATE_PER_S": "100000",
        "BESEDA_RATE_BURST": "100000",
        "BESEDA_MAX_CONN_PER_IP": "100000",
        "BESEDA_LOG_LEVEL": "WARNING",
    }
    notes = [f"{k}={v}" for k, v in overrides.items()] + [
        "per-connection rate limit and per-IP connection cap raised: every socket "
        "comes from 127.0.0.1 and the ramp would otherwise measure the limiter",
    ]

    def setup(self) -> None:
        from wsserver.embedded_pg import EmbeddedPostgres

        self.pg = EmbeddedPostgres(self.work / "pg")
        self.pg.start()

    def teardown(self) -> None:
        self.pg.stop(mode="fast")

    def aux_pids(self) -> list[int]:
        try:
            pid = int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [p.pid for p in tree(pid)]

    def start(self, users: int, group: int, profile: bool) -> None:
        self.runs += 1
        self.users, self.group = users, group
        self.dbname = f"bench_{os.getpid()}_{self.runs}_g{group}"
        self.dsn, self.chat_ids = asyncio.run(self._prepare(self.dbname, users, group))
        self.ws_port, self.http_port = free_port(), free_port()
        beseda = shutil.which("beseda", path=str(Path(sys.executable).parent)) or "beseda"
        env = clean_env(
            DATABASE_URL=self.dsn,
            BESEDA_JWT_SECRET=self.secret,
            BESEDA_DATA_DIR=str(self.work / "beseda-data"),
            **self.overrides,
        )
        self.server = ServerProcess(
            [beseda, "serve", "--host", LOOPBACK, "--ws-port", str(self.ws_port),
             "--http-port", str(self.http_port)],
            env,
            self.work / f"server-{self.name}.log",
            self._profile_file(group, profile),
        )
        wait_tcp(self.ws_port, 90, self.server.proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, _ = http_get(self.http_port, "/readyz")
            except OSError:
                status = 0
            if status == 200 or status == 404:
                break
            time.sleep(0.2)

    def stop(self) -> dict[str, Any]:
        out = super().stop()
        # The next scenario gets a cluster holding only its own database: a finished
        # scenario's tables (hundreds of thousands of messages, a search queue full of
        # dead rows) would otherwise be autovacuumed and crowd shared buffers during
        # the next one. Measured (2026-12-05, chats of 10 run after chats of 2): p99
        # of the latency run 110-121 ms at 3,604 msgs/s with the chats-of-2 database
        # left in place, 23 ms at 2,943 once it was dropped; 35-40 ms at 3,604 in a
        # fixed-rate probe with no other database.
        asyncio.run(self._drop(self.dbname))
        return out

    async def _drop(self, dbname: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.pg.dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            await conn.close()

    async def _prepare(self, dbname: str, users: int, group: int) -> tuple[str, list[int]]:
        import asyncpg

        from wsserver import db

        dsn = await db.ensure_database(self.pg.dsn, dbname)
        await db.migrate(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            nchats = (users + group - 1) // group
            ctype = "private" if group == 2 else "group"
            await conn.execute(
                "INSERT INTO users (id, name, role) SELECT g, 'load ' || g, 'buyer' "
                "FROM generate_series(1, $1::int) g ON CONFLICT (id) DO NOTHING",
                users,
            )
            rows = await conn.fetch(
                'INSERT INTO chats (type, "group", name) SELECT $1, \'order\', '
                "'load chat ' || g FROM generate_series(1, $2::int) g RETURNING id",
                ctype, nchats,
            )
            chat_ids = sorted(r["id"] for r in rows)
            await conn.copy_records_to_table(
                "chat_participants",
                records=[(chat_ids[c], u + 1, "member") for u, c in self.layout(users, group)],
                columns=["chat_id", "user_id", "role"],
            )
        finally:
            await conn.close()
        return dsn, chat_ids

    def specs(self) -> list[SockSpec]:
        from wsserver.auth import mint
        from wsserver.config import Settings

        settings = Settings(jwt_secret=self.secret)
        out = []
        for u, c in self.layout(self.users, self.group):
            token = mint(settings, sub=u + 1, role="buyer", ttl_s=3 * 3600)
            out.append(SockSpec(u + 1, self.chat_ids[c], f"ws://{LOOPBACK}:{self.ws_port}/ws",
                                (("Authorization", f"Bearer {token}"),)))
        return out

    def metrics_text(self) -> str | None:
        try:
            status, body = http_get(self.http_port, "/metrics")
        except OSError:
            return None
        return body if status == 200 else None


TARGETS: dict[str, type[Target]] = {"raw": RawTarget, "beseda": BesedaTarget}


def register(cls: type[Target]) -> type[Target]:
    TARGETS[cls.name] = cls
    return cls


def parse_histogram(text: str | None, name: str) -> dict[str, Any] | None:
    """A Prometheus histogram summed over its labels: {"buckets": {le: n}, sum, count}."""
    if not text:
        return None
    buckets: dict[float, float] = {}
    total = count = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        if metric.startswith(name + "_bucket"):
            le = metric.split('le="', 1)[1].split('"', 1)[0]
            key = float("inf") if le == "+Inf" else float(le)
            buckets[key] = buckets.get(key, 0.0) + v
            found = True
        elif metric.split("{")[0] == name + "_sum":
            total += v
        elif metric.split("{")[0] == name + "_count":
            count += v
    if not found:
        return None
    return {"buckets": buckets, "sum": total, "count": count}


def histogram_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """What happened between two scrapes: count, mean and bucket-bound percentiles."""
    if after is None:
        return None
    b = before or {"buckets": {}, "sum": 0.0, "count": 0.0}
    count = after["count"] - b["count"]
    if count <= 0:
        return {"count": 0}
    cum = {le: after["buckets"][le] - b["buckets"].get(le, 0.0) for le in sorted(after["buckets"])}
    out: dict[str, Any] = {"count": int(count), "mean": (after["sum"] - b["sum"]) / count}
    for q in (50, 90, 99):
        need = count * q / 100
        out[f"p{q}_le"] = next((le for le, n in cum.items() if n >= need), float("inf"))
    out["buckets"] = {("+Inf" if le == float("inf") else f"{le:g}"): int(n) for le, n in cum.items()}
    return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
