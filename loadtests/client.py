"""The load client: worker processes, each running many sockets on uvloop with picows.

The coordinator (this module's `LoadClient`, in the parent process) gives every worker
its share of the sockets and then drives steps: all workers start sending at the same
monotonic instant, each at its share of the offered rate, open loop (a send never waits
for an ack), for a fixed time; then the coordinator polls until every ack and every
expected delivery of that step has come in or a drain deadline passes, and collects the
latency samples.

Each message carries its step and its send time (CLOCK_MONOTONIC, shared by all
processes of the machine): in the envelope `id` (echoed in the ack) and in the text
(echoed in `chat.message.new`). Frames are not JSON-decoded on the client: the marker
`LT~step~t_ns~` is found with a byte search, so the client stays cheap per frame.

Codecs: `json` speaks Beseda's envelopes (the raw ceiling speaks the same); `socketio`
speaks Engine.IO 4 / Socket.IO 5 over the same websocket (used by the socketio target).
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import resource
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from picows import WSListener, WSMsgType, ws_connect

MARK = b"LT~"


@dataclass(frozen=True, slots=True)
class SockSpec:
    """One socket to open: whose it is, the chat it sends to, where and how."""

    user: int
    chat: int
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    auth: str = ""  # socketio: the CONNECT payload (JSON text)


@dataclass
class StepCounts:
    sent: int = 0
    acks: int = 0
    deliveries: int = 0
    errors: int = 0
    ack_ns: array = field(default_factory=lambda: array("q"))
    delivery_ns: array = field(default_factory=lambda: array("q"))


# ----------------------------------------------------------------------------- worker


def _worker_main(conn: Connection, index: int) -> None:
    import uvloop

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(_Worker(conn, index).serve())


class _Worker:
    def __init__(self, conn: Connection, index: int) -> None:
        self.conn = conn
        self.index = index
        self.socks: list[Any] = []
        self.steps: dict[int, StepCounts] = {}
        self.codec = "json"
        self.disconnected = 0
        self.other_frames = 0
        self.error_samples: list[str] = []
        self.msg_no = 0
        self.frames = 0

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            cmd = await loop.run_in_executor(None, self.conn.recv)
            op = cmd["op"]
            if op == "exit":
                self.conn.send({"ok": True})
                return
            handler = getattr(self, "op_" + op)
            try:
                reply = await handler(cmd)
            except Exception as exc:  # reported to the coordinator, which raises
                reply = {"exception": f"{type(exc).__name__}: {exc}"}
            self.conn.send(reply)

    # -- frames

    def on_payload(self, sock: Any, p: bytes) -> None:
        now = time.monotonic_ns()
        self.frames += 1
        i = p.find(MARK)
        if i < 0:
            if self.codec == "socketio" and p == b"2":
                sock.send_text(b"3")
                return
            if b'"error"' in p and len(self.error_samples) < 5:
                self.error_samples.append(p[:300].decode("utf-8", "replace"))
            self.other_frames += 1
            return
        j = p.find(b"~", i + 3)
        k = p.find(b"~", j + 1)
        st = self.steps.get(int(p[i + 3 : j]))
        if st is None:
            self.other_frames += 1
            return
        lat = now - int(p[j + 1 : k])
        if b'"chat.message.new"' in p:
            st.deliveries += 1
            st.delivery_ns.append(lat)
        elif b'"error"' in p:
            st.errors += 1
            if len(self.error_samples) < 5:
                self.error_samples.append(p[:300].decode("utf-8", "replace"))
        elif b'"ack"' in p:
            st.acks += 1
            st.ack_ns.append(lat)
        else:
            self.other_frames += 1

    # -- operations

    async def op_connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.codec = cmd["codec"]
        worker = self
        sio = self.codec == "socketio"

        class Sock(WSListener):  # type: ignore[misc]
            __slots__ = ("t", "spec", "ready", "n")

            def __init__(self, spec: SockSpec) -> None:
                self.spec = spec
                self.t: Any = None
                self.n = 0
                self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def send_text(self, data: bytes) -> None:
                self.t.send(WSMsgType.TEXT, data)

            def on_ws_connected(self, transport: Any) -> None:
                self.t = transport
                if not sio:
                    self.ready.set_result(None)

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                mt = frame.msg_type
                if mt is WSMsgType.TEXT:
                    p = frame.get_payload_as_bytes()
                    if sio and not self.ready.done():
                        if p[:1] == b"0":
                            self.send_text(b"40" + self.spec.auth.encode())
                        elif p[:2] == b"40":
                            self.ready.set_result(None)
                        elif p[:2] == b"44":
                            self.ready.set_exception(RuntimeError(p[:200].decode()))
                        return
                    worker.on_payload(self, p)
                elif mt is WSMsgType.CLOSE:
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()

            def on_ws_disconnected(self, transport: Any) -> None:
                worker.disconnected += 1
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError("closed before ready"))

        sem = asyncio.Semaphore(cmd.get("concurrency", 64))
        failures: list[str] = []
        failed = 0
        t0 = time.monotonic()

        async def one(spec: SockSpec) -> None:
            async with sem:
                try:
                    _, listener = await ws_connect(
                        lambda: Sock(spec),
                        spec.url,
                        extra_headers=dict(spec.headers),
                        enable_auto_ping=False,
                        websocket_handshake_timeout=20,
                        max_frame_size=1 << 20,
                    )
                    await asyncio.wait_for(listener.ready, 20)
                    self.socks.append(listener)
                except Exception as exc:  # counted and sampled in the reply
                    nonlocal failed
                    failed += 1
                    if len(failures) < 5:
                        failures.append(f"{type(exc).__name__}: {exc}"[:300])

        specs = [SockSpec(*s) for s in cmd["socks"]]
        await asyncio.gather(*(one(s) for s in specs))
        return {
            "connected": len(self.socks),
            "failed": failed,
            "failure_samples": failures,
            "secs": time.monotonic() - t0,
        }

    async def op_send(self, cmd: dict[str, Any]) -> dict[str, Any]:
        step = cmd["step"]
        rate = float(cmd["rate"])
        duration_ns = int(cmd["duration"] * 1e9)
        t_start = int(cmd["t_start"])
        st = self.steps.setdefault(step, StepCounts())
        socks = self.socks
        if not socks:
            return {"sent": 0, "acks_in_window": 0, "deliveries_in_window": 0, "cpu_s": 0.0}
        now = time.monotonic_ns()
        if t_start > now:
            await asyncio.sleep((t_start - now) / 1e9)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        nsock = len(socks)
        rr = 0
        msg_no = self.msg_no
        end = t_start + duration_ns
        template = (
            b'{"type":"message.send","id":"LT~%d~%d~%d","data":{"chat_id":%d,'
            b'"message_key":"%d-%d","type":"text","text":"LT~%d~%d~ load"}}'
        )
        while True:
            now = time.monotonic_ns()
            if now >= end:
                break
            due = int(rate * (now - t_start) / 1e9)
            while st.sent < due:
                s = socks[rr]
                rr += 1
                if rr == nsock:
                    rr = 0
                if s.t.is_disconnected:
                    st.sent += 1
                    continue
                msg_no += 1
                t = time.monotonic_ns()
                spec = s.spec
                frame = template % (step, t, msg_no, spec.chat, spec.user, msg_no, step, t)
                if self.codec == "socketio":
                    frame = b'421["message.send",' + frame + b"]"
                s.t.send(WSMsgType.TEXT, frame)
                st.sent += 1
            await asyncio.sleep(0.002)
        self.msg_no = msg_no
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        return {
            "sent": st.sent,
            "acks_in_window": st.acks,
            "deliveries_in_window": st.deliveries,
            "cpu_s": cpu,
            "window_s": (time.monotonic_ns() - t_start) / 1e9,
        }

    async def op_counts(self, cmd: dict[str, Any]) -> dict[str, Any]:
        st = self.steps.get(cmd["step"], StepCounts())
        return {
            "sent": st.sent,
            "acks": st.acks,
            "deliveries": st.deliveries,
            "errors": st.errors,
            "disconnected": self.disconnected,
        }

    async def op_frames(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"frames": self.frames, "disconnected": self.disconnected}

    async def op_collect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        st = self.steps.pop(cmd["step"], StepCounts())
        return {
            "sent": st.sent,
            "acks": st.acks,
            "deliveries": st.deliveries,
            "errors": st.errors,
            "ack_ns": st.ack_ns.tobytes(),
            "delivery_ns": st.delivery_ns.tobytes(),
            "disconnected": self.disconnected,
            "other_frames": self.other_frames,
            "error_samples": list(self.error_samples),
        }

    async def op_close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for s in self.socks:
            if not s.t.is_disconnected:
                s.t.send_close()
                s.t.disconnect()
        await asyncio.sleep(0.2)
        n = len(self.socks)
        self.socks.clear()
        self.steps.clear()
        self.disconnected = 0
        self.error_samples.clear()
        return {"closed": n}


# ------------------------------------------------------------------------ coordinator


def percentiles_ms(samples: array, qs: Iterable[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """Nearest-rank percentiles of nanosecond samples, in milliseconds."""
    if len(samples) == 0:
        return {}
    a = sorted(samples)
    n = len(a)
    out = {f"p{q:g}": a[min(n - 1, max(0, math.ceil(q / 100 * n) - 1))] / 1e6 for q in qs}
    out["max"] = a[-1] / 1e6
    out["mean"] = sum(a) / n / 1e6
    return out


class LoadClient:
    """Owns the worker processes; all calls block the caller (the scenario is sync)."""

    def __init__(self, workers: int = 2) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, i), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _all(self, cmds: list[dict[str, Any]], timeout: float = 120.0) -> list[dict[str, Any]]:
        for pipe, cmd in zip(self.pipes, cmds, strict=False):
            pipe.send(cmd)
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("load worker did not answer")
            reply = pipe.recv()
            if "exception" in reply:
                raise RuntimeError("load worker failed: " + reply["exception"])
            out.append(reply)
        return out

    def connect(self, specs: list[SockSpec], codec: str = "json") -> dict[str, Any]:
        n = len(self.pipes)
        shares: list[list[tuple[Any, ...]]] = [[] for _ in range(n)]
        for i, s in enumerate(specs):
            shares[i % n].append((s.user, s.chat, s.url, s.headers, s.auth))
        replies = self._all(
            [{"op": "connect", "socks": sh, "codec": codec, "concurrency": 64} for sh in shares],
            timeout=300,
        )
        return {
            "connected": sum(r["connected"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "failure_samples": [f for r in replies for f in r["failure_samples"]][:5],
            "secs": max(r["secs"] for r in replies),
        }

    def counts(self, step: int) -> dict[str, int]:
        replies = self._all([{"op": "counts", "step": step}] * len(self.pipes))
        return {k: sum(r[k] for r in replies) for k in replies[0]}

    def run_step(
        self,
        step: int,
        rate: float,
        duration: float,
        fanout: int,
        drain_max: float,
        on_window: Any = None,
    ) -> dict[str, Any]:
        """One step: send at `rate` msgs/s for `duration` s, then drain and collect.

        `fanout` is the number of deliveries each message must produce.
        `on_window(start, end)` is called in the coordinator around the send window
        (used to sample the server's CPU over the same interval).
        """
        n = len(self.pipes)
        t_start = time.monotonic_ns() + 300_000_000
        if on_window:
            on_window("start")
        replies = self._all(
            [
                {"op": "send", "step": step, "rate": rate / n, "duration": duration, "t_start": t_start}
                for _ in range(n)
            ],
            timeout=duration + 60,
        )
        if on_window:
            on_window("end")
        window_end = time.monotonic()
        sent = sum(r["sent"] for r in replies)
        expected = sent * fanout
        drained_after: float | None = None
        deadline = window_end + drain_max
        c = self.counts(step)
        while True:
            if c["acks"] + c["errors"] >= sent and c["deliveries"] >= expected:
                drained_after = time.monotonic() - window_end
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
            c = self.counts(step)
        col = self._all([{"op": "collect", "step": step}] * n)
        ack_ns = array("q")
        del_ns = array("q")
        for r in col:
            ack_ns.frombytes(r["ack_ns"])
            del_ns.frombytes(r["delivery_ns"])
        window = max(r.get("window_s", duration) for r in replies)
        return {
            "step": step,
            "offered_rate": rate,
            "duration_s": duration,
            "sent": sent,
            "send_rate": sent / window,
            "acks": sum(r["acks"] for r in col),
            "acks_in_window": sum(r["acks_in_window"] for r in replies),
            "ack_rate": sum(r["acks_in_window"] for r in replies) / window,
            "deliveries": sum(r["deliveries"] for r in col),
            "expected_deliveries": expected,
            "deliveries_in_window": sum(r["deliveries_in_window"] for r in replies),
            "delivery_rate": sum(r["deliveries_in_window"] for r in replies) / window,
            "errors": sum(r["errors"] for r in col),
            "error_samples": [e for r in col for e in r["error_samples"]][:3],
            "disconnected": sum(r["disconnected"] for r in col),
            "drained_after_s": drained_after,
            "client_cpu_pct": [100.0 * r["cpu_s"] / window for r in replies],
            "ack_ms": percentiles_ms(ack_ns),
            "delivery_ms": percentiles_ms(del_ns),
        }

    def frames(self) -> int:
        """Frames received by all workers so far."""
        return sum(r["frames"] for r in self._all([{"op": "frames"}] * len(self.pipes)))

    def quiesce(self, max_s: float, quiet_s: float = 0.5) -> float:
        """Wait (bounded) until no frame has arrived for `quiet_s`: the server caught up."""
        t0 = time.monotonic()
        last = -1
        quiet_since = t0
        while time.monotonic() - t0 < max_s:
            n = self.frames()
            now = time.monotonic()
            if n != last:
                last, quiet_since = n, now
            elif now - quiet_since >= quiet_s:
                break
            time.sleep(0.1)
        return time.monotonic() - t0

    def close_sockets(self) -> None:
        self._all([{"op": "close"}] * len(self.pipes), timeout=60)

    def shutdown(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send({"op": "exit"})
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)

    def __enter__(self) -> "LoadClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

