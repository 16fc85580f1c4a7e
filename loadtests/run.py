"""The core load scenario: ramp to the highest sustained send rate, then latency at half.

    python -m loadtests.run [--quick] [--targets raw,beseda] [--profile]

For each target and each chat size (2, then 10) it starts a fresh server, opens the
sockets (one per user, every user in one chat), measures the server's RSS per idle
connection, ramps the offered send rate in steps, and runs a latency step at half the
highest sustained rate. Results: loadtests/reports/core.md, core.json and PNG plots.
See loadtests/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .client import LoadClient
from .targets import (
    TARGETS,
    Target,
    cpu_seconds,
    histogram_delta,
    parse_histogram,
    rss_bytes,
)

HERE = Path(__file__).resolve().parent
BATCH_METRIC = "beseda_writer_batch_size"
# Where a message's time goes inside Beseda, scraped around every step.
STAGE_METRICS = {
    "send_to_commit": "beseda_send_to_commit_seconds",
    "batch_seconds": "beseda_writer_batch_seconds",
    "commit_to_delivery": "beseda_commit_to_delivery_seconds",
    "loop_lag": "beseda_event_loop_lag_seconds",
    "gc_pause": "beseda_gc_pause_seconds",
}


@dataclass
class Config:
    targets: list[str]
    groups: list[int]
    sockets: int = 2000
    workers: int = 2
    step_s: float = 4.0
    drain_s: float = 3.0
    factor: float = 1.5
    start_deliveries: float = 500.0  # first step's offered deliveries/s
    max_steps: int = 16
    fail_streak: int = 2
    refine: bool = True
    latency_s: float = 10.0
    p99_limit_ms: float = 250.0
    keep_ratio: float = 0.95
    scenario_budget_s: float = 150.0
    recover_s: float = 60.0  # at most this long for an overloaded server to catch up
    wait_quiet_s: float = 0.0  # before each scenario, wait up to this for other load to drop
    quiet_pct: float = 40.0  # "quiet": the machine busy under this % (200% = both cores)
    profile: bool = False
    out: Path = HERE / "reports"
    name: str = "core"
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------- judgement


def judge(step: dict[str, Any], cfg: Config) -> tuple[bool, list[str]]:
    """Whether a step was sustained, and why not. See README.md, "Sustained"."""
    why: list[str] = []
    offered, sent = step["offered_rate"], step["sent"]
    if step["send_rate"] < cfg.keep_ratio * offered:
        why.append(f"client offered only {step['send_rate']:.0f}/s")
    if step["errors"]:
        why.append(f"{step['errors']} error replies")
    if step["disconnected"]:
        why.append(f"{step['disconnected']} sockets closed")
    if sent and step["acks_in_window"] < cfg.keep_ratio * sent:
        why.append(f"acks fell behind ({step['acks_in_window'] / sent:.0%} in window)")
    if step["drained_after_s"] is None:
        why.append(
            f"not all acks/deliveries within {cfg.drain_s:g}s "
            f"({step['acks']}/{sent} acks, {step['deliveries']}/{step['expected_deliveries']} deliveries)"
        )
    for kind in ("ack_ms", "delivery_ms"):
        p99 = step[kind].get("p99")
        if p99 is not None and p99 > cfg.p99_limit_ms:
            why.append(f"{kind[:-3]} p99 {p99:.0f} ms > {cfg.p99_limit_ms:g} ms")
    return not why, why


# -------------------------------------------------------------------------- scenario


class Scenario:
    def __init__(self, target: Target, group: int, cfg: Config, client: LoadClient) -> None:
        self.t, self.group, self.cfg, self.client = target, group, cfg, client
        self.fanout = group - 1
        self.result: dict[str, Any] = {"target": target.name, "group": group,
                                       "sockets": cfg.sockets, "steps": []}
        self.step_no = 0

    def log(self, msg: str) -> None:
        print(f"[{self.t.name} g{self.group}] {msg}", flush=True)

    def run(self) -> dict[str, Any]:
        cfg, r = self.cfg, self.result
        r["background_cpu_pct"], r["waited_for_quiet_s"] = wait_quiet(cfg.wait_quiet_s,
                                                                      cfg.quiet_pct)
        self.log(f"background CPU {r['background_cpu_pct']:.0f}% "
                 f"(waited {r['waited_for_quiet_s']:.0f}s for a quieter machine)")
        t0 = time.monotonic()
        self.t.start(cfg.sockets, self.group, cfg.profile)
        try:
            specs = self.t.specs()
            time.sleep(1.0)
            rss0 = rss_bytes(self.t.server_pids())
            conn = self.client.connect(specs, self.t.codec)
            self.log(f"connected {conn['connected']}/{len(specs)} in {conn['secs']:.1f}s")
            r["connect"] = conn
            time.sleep(2.0)
            rss1 = rss_bytes(self.t.server_pids())
            r["rss_before"] = rss0
            r["rss_idle_connected"] = rss1
            r["rss_per_connection"] = (rss1 - rss0) / max(conn["connected"], 1)
            self.log(f"RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB, "
                     f"{r['rss_per_connection'] / 1024:.1f} KiB per idle connection")
            if conn["connected"] < len(specs):
                r["error"] = f"only {conn['connected']} of {len(specs)} sockets connected"
                return r
            metrics0 = self.t.metrics_text()
            r["metrics_exposed"] = metrics0 is not None
            r["batch_metric_exposed"] = parse_histogram(metrics0, BATCH_METRIC) is not None
            self.ramp(t0)
            peak = r.get("peak_rate")
            if peak:
                r["recover_before_latency_s"] = self.settle(cfg.recover_s)
                self.log(f"latency run at {peak / 2:.0f} msgs/s")
                lat = self.step(peak / 2, cfg.latency_s, "latency")
                r["latency"] = lat
            r["batch_size"] = histogram_delta(parse_histogram(metrics0, BATCH_METRIC),
                                              parse_histogram(self.t.metrics_text(), BATCH_METRIC))
            r["rss_end"] = rss_bytes(self.t.server_pids())
            self.client.close_sockets()
        finally:
            r.update(self.t.stop())
            r["wall_s"] = time.monotonic() - t0
        return r

    def settle(self, max_s: float, quiet_s: float = 0.5, idle_pct: float = 15.0) -> float:
        """Wait (bounded) until the server has caught up with what was sent before.

        Caught up: no frame has reached the client for `quiet_s` and the server and
        its helper (PostgreSQL, Valkey) together stayed under `idle_pct` of a core
        meanwhile: an overloaded server can go quiet on the wire while it still chews
        through a backlog, and work a server defers past a step (Beseda's search
        indexing) would otherwise run into the next step or the latency run.
        """
        pids = self.t.server_pids() + self.t.aux_pids()
        t0 = prev_t = since = time.monotonic()
        prev_cpu = cpu_seconds(pids)
        last = -1
        while time.monotonic() - t0 < max_s:
            time.sleep(0.25)
            n, cpu, now = self.client.frames(), cpu_seconds(pids), time.monotonic()
            busy = 100.0 * (cpu - prev_cpu) / max(now - prev_t, 1e-3)
            prev_cpu, prev_t = cpu, now
            if n != last or busy > idle_pct:
                last, since = n, now
            elif now - since >= quiet_s:
                break
        return time.monotonic() - t0

    def step(self, rate: float, duration: float, kind: str) -> dict[str, Any]:
        pids, aux = self.t.server_pids(), self.t.aux_pids()
        marks: dict[str, tuple[float, float, float]] = {}

        def on_window(which: str) -> None:
            marks[which] = (time.monotonic(), cpu_seconds(pids), cpu_seconds(aux), busy_seconds())

        text0 = self.t.metrics_text()
        m0 = parse_histogram(text0, BATCH_METRIC)
        res = self.client.run_step(self.step_no, rate, duration, self.fanout,
                                   self.cfg.drain_s, on_window)
        self.step_no += 1
        (ta, sa, xa, ba), (tb, sb, xb, bb) = marks["start"], marks["end"]
        wall = max(tb - ta - 0.3, 1e-3)  # the window starts 0.3 s after "start"
        res["kind"] = kind
        res["server_cpu_pct"] = 100.0 * (sb - sa) / wall
        res["aux_cpu_pct"] = 100.0 * (xb - xa) / wall if aux else None
        # Whatever else kept the machine's cores busy meanwhile (the box is shared).
        ours = (sb - sa) + (xb - xa) + sum(res["client_cpu_pct"]) * wall / 100.0
        res["other_cpu_pct"] = max(0.0, 100.0 * ((bb - ba) - ours) / (tb - ta))
        res["server_rss"] = rss_bytes(pids)
        text1 = self.t.metrics_text()
        res["batch_size"] = histogram_delta(m0, parse_histogram(text1, BATCH_METRIC))
        res["stages"] = {
            key: histogram_delta(parse_histogram(text0, name), parse_histogram(text1, name))
            for key, name in STAGE_METRICS.items()
        }
        ok, why = judge(res, self.cfg)
        res["sustained"], res["why_not"] = ok, why
        res["settle_s"] = self.settle(20.0 if ok else min(30.0, self.cfg.recover_s))
        d, a = res["delivery_ms"], res["ack_ms"]
        self.log(
            f"{kind} offered {rate:8.0f}/s sent {res['send_rate']:8.0f}/s "
            f"acks {res['ack_rate']:8.0f}/s deliv {res['delivery_rate']:9.0f}/s "
            f"ack p99 {a.get('p99', float('nan')):7.1f} deliv p50/p99 "
            f"{d.get('p50', float('nan')):6.1f}/{d.get('p99', float('nan')):7.1f} ms "
            f"srv {res['server_cpu_pct']:4.0f}% cli {'/'.join(f'{c:.0f}' for c in res['client_cpu_pct'])}% "
            f"other {res['other_cpu_pct']:3.0f}% "
            f"{'OK' if ok else 'FAIL: ' + '; '.join(why)}"
        )
        return res

    def ramp(self, t0: float) -> None:
        cfg, r = self.cfg, self.result
        rate = cfg.start_deliveries / self.fanout
        best: float | None = None
        first_fail: float | None = None
        streak = 0
        for _ in range(cfg.max_steps):
            if time.monotonic() - t0 > cfg.scenario_budget_s:
                r["ramp_cut"] = "scenario time budget reached"
                break
            res = self.step(rate, cfg.step_s, "ramp")
            r["steps"].append(res)
            if res["sustained"]:
                best = max(best or 0.0, rate)
                streak = 0
                first_fail = None
            else:
                streak += 1
                first_fail = first_fail or rate
                if streak >= cfg.fail_streak:
                    break
            rate *= cfg.factor
        floor = rate_floor = cfg.start_deliveries / self.fanout
        while best is None and rate_floor / floor > 0.2 and time.monotonic() - t0 < cfg.scenario_budget_s:
            # Nothing sustained from the start: step down (a few times) instead.
            rate_floor /= 2
            res = self.step(rate_floor, cfg.step_s, "down")
            r["steps"].append(res)
            if res["sustained"]:
                best = rate_floor
        if cfg.refine and best and first_fail and time.monotonic() - t0 < cfg.scenario_budget_s:
            mid = math.sqrt(best * first_fail)
            res = self.step(mid, cfg.step_s, "refine")
            r["steps"].append(res)
            if res["sustained"]:
                best = mid
        r["peak_rate"] = best
        if best:
            at = [s for s in r["steps"] if s["offered_rate"] == best][-1]
            r["peak_step"] = {k: at.get(k) for k in ("send_rate", "ack_rate", "delivery_rate",
                                                     "server_cpu_pct", "aux_cpu_pct",
                                                     "other_cpu_pct", "client_cpu_pct")}


# --------------------------------------------------------------------------- machine


def wait_quiet(max_s: float, threshold_pct: float, sample_s: float = 2.0) -> tuple[float, float]:
    """Sample the machine's busy CPU (nothing of ours running) until it is under
    `threshold_pct` or `max_s` has passed; returns (last sample %, seconds waited)."""
    t0 = time.monotonic()
    while True:
        b0, s0 = busy_seconds(), time.monotonic()
        time.sleep(sample_s)
        pct = 100.0 * (busy_seconds() - b0) / (time.monotonic() - s0)
        if pct < threshold_pct or time.monotonic() - t0 >= max_s:
            return pct, time.monotonic() - t0


def busy_seconds() -> float:
    """CPU seconds all cores spent in processes (or stolen by the hypervisor) so far.

    Interrupt and softirq time is left out: on loopback it is mostly our own traffic.
    guest time is already inside user time.
    """
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "steal", 0.0)


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for mod in ("websockets", "uvloop", "picows", "asyncpg", "msgspec", "socketio", "psutil"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=HERE, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "py_spy": shutil.which("py-spy", path=str(Path(sys.executable).parent)) is not None,
    }


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter steps, coarser ramp (~3-4 min)")
    p.add_argument("--targets", default="raw,beseda", help=f"comma list of {','.join(TARGETS)}")
    p.add_argument("--groups", default="2,10", help="chat sizes, comma list")
    p.add_argument("--sockets", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2, help="load client processes")
    p.add_argument("--step-s", type=float)
    p.add_argument("--latency-s", type=float)
    p.add_argument("--factor", type=float, help="ramp multiplier between steps")
    p.add_argument("--p99-limit-ms", type=float, default=250.0)
    p.add_argument("--profile", action="store_true", help="run servers under py-spy record")
    p.add_argument("--beseda-env", action="append", default=[], metavar="BESEDA_X=V",
                   help="extra setting for the Beseda server (repeatable; listed in the report)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                   help="before each scenario wait up to S s for the shared machine's other "
                        "load to drop under --quiet-pct (default 60 s, --quick 0)")
    p.add_argument("--quiet-pct", type=float, default=40.0)
    p.add_argument("--out", type=Path, default=HERE / "reports")
    p.add_argument("--name", default=None, help="report base name (default core, or core-quick)")
    a = p.parse_args(argv)
    cfg = Config(targets=[t for t in a.targets.split(",") if t],
                 groups=[int(g) for g in a.groups.split(",") if g],
                 sockets=a.sockets, workers=a.workers, p99_limit_ms=a.p99_limit_ms,
                 profile=a.profile, out=a.out, wait_quiet_s=60.0, quiet_pct=a.quiet_pct)
    if a.quick:
        cfg.step_s, cfg.factor, cfg.latency_s, cfg.drain_s = 2.0, 2.0, 4.0, 2.0
        cfg.scenario_budget_s = 60.0
        cfg.recover_s = 30.0
        cfg.wait_quiet_s = 0.0
        cfg.name = "core-quick"
    if a.step_s:
        cfg.step_s = a.step_s
    if a.latency_s:
        cfg.latency_s = a.latency_s
    if a.factor:
        cfg.factor = a.factor
    if a.name:
        cfg.name = a.name
    if a.wait_quiet is not None:
        cfg.wait_quiet_s = a.wait_quiet
    for t in cfg.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r}; known: {', '.join(TARGETS)}")
    extra: dict[str, str] = {}
    for item in a.beseda_env:
        key, sep, val = item.partition("=")
        if not sep or not key.startswith("BESEDA_"):
            p.error(f"--beseda-env takes BESEDA_NAME=value, not {item!r}")
        extra[key] = val
    if extra:
        from loadtests.targets import BesedaTarget

        BesedaTarget.overrides = {**BesedaTarget.overrides, **extra}
        BesedaTarget.notes = BesedaTarget.notes + [f"{k}={v} (--beseda-env)" for k, v in extra.items()]
    return cfg, a


def _scenario(target: Target, group: int, cfg: Config, client: LoadClient) -> dict[str, Any]:
    try:
        return Scenario(target, group, cfg, client).run()
    except Exception as exc:  # recorded in the report; the run goes on
        print(f"[{target.name} g{group}] failed: {exc!r}", flush=True)
        try:
            client.close_sockets()
        except Exception as exc2:  # workers may be gone
            print(f"close failed: {exc2!r}", flush=True)
        return {"target": target.name, "group": group, "error": repr(exc)}


def main(argv: list[str] | None = None) -> int:
    from . import sio_target  # noqa: F401  registers the socketio target

    cfg, _ = parse_args(argv)
    command = "python -m loadtests.run " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="beseda-load-"))
    report: dict[str, Any] = {
        "command": command,
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "scenarios": [],
        "target_notes": {},
    }
    print(f"work dir {work}; targets {cfg.targets}; groups {cfg.groups}", flush=True)
    with LoadClient(cfg.workers) as client:
        report["client_pids"] = client.pids
        ready: list[Target] = []
        for name in cfg.targets:
            target = TARGETS[name](work)
            report["target_notes"][name] = list(target.notes)
            try:
                target.setup()
                ready.append(target)
            except Exception as exc:  # a target that cannot start is reported, not fatal
                report["scenarios"].append({"target": name, "error": f"setup: {exc}"})
                print(f"[{name}] setup failed: {exc}", flush=True)
        try:
            # Chat size outermost: the targets of one chat size run back to back, so the
            # comparison sees the shared machine in about the same state.
            for group in cfg.groups:
                for target in ready:
                    report["scenarios"].append(_scenario(target, group, cfg, client))
        finally:
            for target in ready:
                try:
                    target.teardown()
                except Exception as exc:  # keep tearing the others down
                    print(f"[{target.name}] teardown failed: {exc!r}", flush=True)
    report["wall_s"] = time.monotonic() - t0
    from .report import write_report

    paths = write_report(report, cfg.out, cfg.name)
    print("wrote " + ", ".join(str(p) for p in paths), flush=True)
    if cfg.profile:
        print(f"raw py-spy stacks kept in {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
