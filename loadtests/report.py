"""Writes the run's report: NAME.md (for people), NAME.json (everything), NAME-*.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _f(v: Any, nd: int = 0, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:,.{nd}f}{unit}"
    return str(v)


def _ratio(a: Any, b: Any) -> str:
    if not a or not b:
        return "–"
    return f"{a / b:.2f}×"



def _by(report: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(s["target"], s.get("group", 0)): s for s in report["scenarios"]}


def write_report(report: dict[str, Any], out: Path, name: str, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    pngs = _plots(report, out, name) if plots else []
    md = out / f"{name}.md"
    js = out / f"{name}.json"
    js.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md.write_text(_markdown(report, name, pngs))
    return [md, js, *pngs]


# -------------------------------------------------------------------------- markdown


def _markdown(r: dict[str, Any], name: str, pngs: list[Path]) -> str:
    cfg, m = r["config"], r["machine"]
    by = _by(r)
    targets = list(dict.fromkeys(s["target"] for s in r["scenarios"]))
    groups = cfg["groups"]
    L: list[str] = []
    a = L.append
    a(f"# Beseda core load test ({name})\n")
    a(f"Run {r['started_utc']}, {r['wall_s'] / 60:.1f} min wall. Command:\n")
    a(f"    {r['command']}\n")
    a("## Where Beseda stands\n")
    for line in _findings(r):
        a(f"- {line}")
    a("")
    for g in groups:
        a(f"### Chats of {g} ({cfg['sockets']} sockets, one per user, {cfg['sockets'] // g} chats)\n")
        a("| target | peak sustained msgs/s | deliveries/s at peak | vs raw | ack p50 / p99 ms @ half peak | delivery p50 / p99 ms @ half peak | RSS per idle conn | server CPU at peak | helper CPU at peak | other CPU at peak | client CPU at peak (per worker) |")
        a("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        raw = by.get(("raw", g), {})
        for t in targets:
            s = by.get((t, g))
            if s is None:
                continue
            if "error" in s and not s.get("steps"):
                a(f"| {t} | failed: {s['error'][:120]} | | | | | | | | | |")
                continue
            pk = s.get("peak_step") or {}
            lat = s.get("latency") or {}
            am, dm = lat.get("ack_ms", {}), lat.get("delivery_ms", {})
            bad = " (run not sustained)" if lat and not lat.get("sustained") else ""
            a(
                f"| {t} | {_f(s.get('peak_rate'))} | {_f(pk.get('delivery_rate'))} | "
                f"{_ratio(s.get('peak_rate'), raw.get('peak_rate')) if t != 'raw' else '1'} | "
                f"{_f(am.get('p50'), 1)} / {_f(am.get('p99'), 1)} | "
                f"{_f(dm.get('p50'), 1)} / {_f(dm.get('p99'), 1)}{bad} | "
                f"{_f(s.get('rss_per_connection', 0) / 1024, 1, ' KiB')} | "
                f"{_f(pk.get('server_cpu_pct'), 0, '%')} | {_f(pk.get('aux_cpu_pct'), 0, '%')} | "
                f"{_f(pk.get('other_cpu_pct'), 0, '%')} | "
                f"{'/'.join(_f(c, 0, '%') for c in pk.get('client_cpu_pct', []))} |"
            )
        a("")
    if "raw" in targets and len(targets) > 1:
        a("### Ratios to the raw ceiling\n")
        a("| target | chats of | throughput (peak msgs/s) | delivery p99 @ half peak | ack p99 @ half peak | RSS per connection |")
        a("|---|---:|---:|---:|---:|---:|")
        for t in targets:
            if t == "raw":
                continue
            for g in groups:
                s, raw = by.get((t, g), {}), by.get(("raw", g), {})
                sl, rl = s.get("latency") or {}, raw.get("latency") or {}
                a(
                    f"| {t} | {g} | {_ratio(s.get('peak_rate'), raw.get('peak_rate'))} | "
                    f"{_ratio(sl.get('delivery_ms', {}).get('p99'), rl.get('delivery_ms', {}).get('p99'))} | "
                    f"{_ratio(sl.get('ack_ms', {}).get('p99'), rl.get('ack_ms', {}).get('p99'))} | "
                    f"{_ratio(s.get('rss_per_connection'), raw.get('rss_per_connection'))} |"
                )
        a("\nThroughput ratio below 1 means slower than the ceiling; latency and memory "
          "ratios above 1 mean more than the ceiling. The latency runs are at each target's "
          "own half peak, so their offered rates differ.\n")
    a("## Writer batch sizes (`beseda_writer_batch_size`)\n")
    any_beseda = False
    for g in groups:
        s = by.get(("beseda", g))
        if not s:
            continue
        any_beseda = True
        if not s.get("batch_metric_exposed"):
            a(f"- chats of {g}: not exposed"
              + ("" if s.get("metrics_exposed") else " (no /metrics answer)") + "\n")
            continue
        b = s.get("batch_size") or {}
        a(f"- chats of {g}, whole scenario: {b.get('count', 0):,} batches, mean "
          f"{_f(b.get('mean'), 1)} messages, p50 ≤ {_f(b.get('p50_le'), 0)}, p90 ≤ "
          f"{_f(b.get('p90_le'), 0)}, p99 ≤ {_f(b.get('p99_le'), 0)} (bucket bounds)")
    if any_beseda:
        a("\nPer step (mean batch size at each offered rate) is in the ramp tables below.\n")
    else:
        a("Beseda was not run.\n")
    stage_rows = [(s["target"], s.get("group"), s["latency"]["stages"]) for s in r["scenarios"]
                  if s.get("latency") and any((s["latency"].get("stages") or {}).values())]
    if stage_rows:
        a("## Where the time goes at half peak (server histograms)\n")
        a("Bucket bounds from the server's own histograms over the latency run: a p99 "
          "of ≤ 0.25 means between the next lower bound and 250 ms.\n")
        a("| target | chats of | send→commit p50 / p99 | batch (one round trip) p50 / p99 | "
          "commit→delivery p50 / p99 | event-loop lag p50 / p99 / mean |")
        a("|---|---:|---:|---:|---:|---:|")

        def _ms(d: dict | None, k: str) -> str:
            v = (d or {}).get(k)
            return "–" if v is None else ("∞" if v == float("inf") else f"≤ {v * 1000:g} ms")

        for t, g, st in stage_rows:
            c, b, d, lag = (st.get(k) for k in
                            ("send_to_commit", "batch_seconds", "commit_to_delivery", "loop_lag"))
            mean = (lag or {}).get("mean")
            a(f"| {t} | {g} | {_ms(c, 'p50_le')} / {_ms(c, 'p99_le')} | "
              f"{_ms(b, 'p50_le')} / {_ms(b, 'p99_le')} | {_ms(d, 'p50_le')} / {_ms(d, 'p99_le')} | "
              f"{_ms(lag, 'p50_le')} / {_ms(lag, 'p99_le')} / "
              f"{'–' if mean is None else f'{mean * 1000:.1f} ms'} |")
        a("")
    a("## Ramps\n")
    for s in r["scenarios"]:
        t, g = s["target"], s.get("group")
        a(f"### {t}, chats of {g}\n")
        if "error" in s:
            a(f"Error: `{s['error']}`\n")
        conn = s.get("connect") or {}
        if conn:
            a(f"Connected {conn.get('connected')} sockets in {_f(conn.get('secs'), 1)} s "
              f"({conn.get('failed')} failed{': ' + '; '.join(conn['failure_samples']) if conn.get('failure_samples') else ''}). "
              f"Server RSS {_f(s.get('rss_before', 0) / 2**20, 1)} MiB before, "
              f"{_f(s.get('rss_idle_connected', 0) / 2**20, 1)} MiB with the idle sockets "
              f"(→ {_f(s.get('rss_per_connection', 0) / 1024, 1)} KiB each), "
              f"{_f(s.get('rss_end', 0) / 2**20, 1)} MiB at the end. "
              f"Scenario wall {_f(s.get('wall_s'), 0)} s. Machine busy with others just "
              f"before: {_f(s.get('background_cpu_pct'), 0, '%')} (after waiting "
              f"{_f(s.get('waited_for_quiet_s'), 0)} s for it to drop).\n")
        if s.get("ramp_cut"):
            a(f"Ramp cut: {s['ramp_cut']}.\n")
        steps = list(s.get("steps", []))
        if s.get("latency"):
            steps.append(s["latency"])
        if steps:
            a("| step | offered msgs/s | sent/s | acks/s | deliveries/s | ack p50/p99 ms | delivery p50/p99/max ms | server CPU | helper CPU | client CPU | other CPU | batch mean | settled after s | verdict |")
            a("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            for x in steps:
                am, dm = x["ack_ms"], x["delivery_ms"]
                b = x.get("batch_size") or {}
                verdict = "sustained" if x["sustained"] else "no: " + "; ".join(x["why_not"])
                a(
                    f"| {x['kind']} | {_f(x['offered_rate'])} | {_f(x['send_rate'])} | {_f(x['ack_rate'])} | "
                    f"{_f(x['delivery_rate'])} | {_f(am.get('p50'), 1)} / {_f(am.get('p99'), 1)} | "
                    f"{_f(dm.get('p50'), 1)} / {_f(dm.get('p99'), 1)} / {_f(dm.get('max'), 0)} | "
                    f"{_f(x['server_cpu_pct'], 0, '%')} | {_f(x.get('aux_cpu_pct'), 0, '%')} | "
                    f"{'/'.join(_f(c, 0, '%') for c in x['client_cpu_pct'])} | "
                    f"{_f(x.get('other_cpu_pct'), 0, '%')} | {_f(b.get('mean'), 1)} | "
                    f"{_f(x.get('settle_s'), 1)} | {verdict} |"
                )
            a("")
        errs = [e for x in steps for e in x.get("error_samples", [])]
        if errs:
            a("Error replies seen (first few):\n")
            for e in errs[:3]:
                a(f"    {e}")
            a("")
        prof = s.get("profile")
        if prof:
            a(f"#### Profile ({t}, chats of {g}): py-spy, {prof.get('samples', 0):,} samples\n")
            if "error" in prof:
                a(f"{prof['error']}\n")
            else:
                a("| self % | function | | inclusive % | function |")
                a("|---:|---|---|---:|---|")
                for (fs, ps), (fi, pi) in zip(prof["self"], prof["inclusive"], strict=False):
                    a(f"| {ps} | `{fs}` | | {pi} | `{fi}` |")
                a("")
    a("## Definitions\n")
    a(f"- **Offered rate**: messages per second the load client is told to send, open loop "
      f"(a send never waits for an ack), spread evenly over all sockets; each step is held "
      f"{cfg['step_s']:g} s. Steps grow ×{cfg['factor']:g} from {cfg['start_deliveries']:g} "
      f"offered deliveries/s; after two failed steps in a row one step at the geometric mean "
      f"of the best sustained and the first failed rate refines the peak.")
    a(f"- **Sustained**: a step is sustained when (1) the client really sent ≥ "
      f"{cfg['keep_ratio']:.0%} of the offered messages, (2) ≥ {cfg['keep_ratio']:.0%} of them "
      f"were acked inside the step's own window (acks keep up with sends), (3) every ack "
      f"and every expected delivery (group size − 1 per message) arrived within "
      f"{cfg['drain_s']:g} s after the window, with no error reply and no socket closed, and "
      f"(4) p99 send→ack and p99 send→delivery are ≤ {cfg['p99_limit_ms']:g} ms. "
      f"**Peak** is the highest sustained offered rate.")
    a("- **acks/s, deliveries/s**: acks and `chat.message.new` events received inside the "
      "send window, divided by the window.")
    a("- **Latency**: send→ack is from just before the frame is written to the ack's arrival "
      "on the sending socket; send→delivery to the event's arrival on another member's "
      "socket, in another process or the same one (CLOCK_MONOTONIC is machine-wide). "
      f"The latency run holds half the peak for {cfg['latency_s']:g} s.")
    a("- **Settled after**: after each step the run waits (20 s at most after a sustained "
      "step, 30 s after a failed one, 60 s before the latency run) until no frame has "
      "reached the client for 0.5 s and the server and its helper together use under 15% "
      "of a core, so every step, and the latency run, starts from a server that has "
      "finished the work of the one before, background work included (Beseda's search "
      "indexing of the stored messages). A long wait after a sustained step means work "
      "that ran past the step's window.")
    a("- **RSS per idle connection**: server RSS (the server process and its children; not "
      "PostgreSQL) with all sockets open and their handshakes (and, for Beseda, token "
      "checks) done, minus RSS before the first socket, divided by the sockets.")
    a("- **Server CPU**: CPU seconds of the server processes over the send window / window "
      "(100% = one core). **Helper CPU**: PostgreSQL (Beseda) or Valkey (socketio). "
      "**Client CPU**: each load worker process's own CPU over the window; a worker near "
      "100% would mean the client, not the server, was the limit. **Other CPU**: busy "
      "time of the whole machine not spent by the server, its helper or the load workers "
      "(other tenants of this shared box, the coordinator, time stolen by the hypervisor; "
      "interrupt time excluded), 200% = both cores; "
      "a step with high other CPU measured a machine that was not ours alone.")
    a("")
    a("## Machine and setup\n")
    a(f"- CPU: {m['cpu']} × {m['cores']} cores, {m['memory_gib']} GiB; kernel {m['kernel']}; "
      f"Python {m['python']}; load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}")
    a(f"- Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items() if v)}; branch commit {m['git_commit']}")
    a(f"- Load client: {cfg['workers']} worker processes (picows on uvloop), "
      f"{cfg['sockets']} sockets in total, on the same 2-core machine as the server: "
      "client and server compete for the same cores, so every figure is a same-box figure.")
    a("- Compression off everywhere. All traffic to 127.0.0.1, to servers started by the run.")
    for t, notes in r.get("target_notes", {}).items():
        if notes:
            a(f"- {t}: " + "; ".join(notes))
    a("")
    if pngs:
        a("## Plots\n")
        for p in pngs:
            a(f"![{p.stem}]({p.name})\n")
    return "\n".join(L) + "\n"


def _limit(s: dict[str, Any]) -> str:
    """A guess at what stopped the ramp, from the first failed step's CPU figures."""
    fails = [x for x in s.get("steps", []) if not x["sustained"]]
    if not fails:
        return "none (the ramp never failed: raise --factor or the step count)"
    f = fails[0]
    why = "; ".join(f["why_not"])
    if any("client offered only" in w for w in f["why_not"]):
        return f"the load client could not offer the rate ({why})"
    if (f.get("aux_cpu_pct") or 0) >= 75:
        return (f"helper-bound, the database/bus at {f['aux_cpu_pct']:.0f}% of a core "
                f"while the server used {f['server_cpu_pct']:.0f}% ({why})")
    if f["server_cpu_pct"] >= 85:
        return f"server CPU-bound ({f['server_cpu_pct']:.0f}% of a core; {why})"
    if (f.get("other_cpu_pct") or 0) >= 60:
        return (f"unclear, the server used {f['server_cpu_pct']:.0f}% while other tenants "
                f"of the machine used {f['other_cpu_pct']:.0f}% ({why})")
    return f"latency or queueing with CPU to spare, server {f['server_cpu_pct']:.0f}% ({why})"


def _findings(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    by = _by(r)
    for s in r["scenarios"]:
        if not s.get("steps"):
            continue
        t, g = s["target"], s["group"]
        raw = by.get(("raw", g), {})
        ratio = (f", {_ratio(s.get('peak_rate'), raw.get('peak_rate'))} the raw ceiling"
                 if t != "raw" and raw.get("peak_rate") else "")
        if ratio and s.get("peak_rate") and s["peak_rate"] >= raw["peak_rate"]:
            # The raw server has no storage: reaching its peak means the ramp stopped
            # it early (a step failed on noise) or both stopped on the same step.
            ratio += (" (at or above the ceiling: the raw ramp stopped on the same step "
                      "or lower, so the ceiling is a lower bound here)")
        out.append(f"**{t}, chats of {g}**: peak {_f(s.get('peak_rate'))} msgs/s "
                   f"({_f((s.get('peak_step') or {}).get('delivery_rate'))} deliveries/s){ratio}; "
                   f"first failed step: {_limit(s)}.")
    others = [x.get("other_cpu_pct") for s in r["scenarios"] for x in s.get("steps", [])
              if x.get("other_cpu_pct") is not None]
    if others:
        mean = sum(others) / len(others)
        out.append(f"The machine was shared: other processes used on average {mean:.0f}% "
                   f"(of 200%) during the steps, up to {max(others):.0f}%. Single steps "
                   "can fail on noise; the ramp needs two failures in a row to stop.")
    return out


# ----------------------------------------------------------------------------- plots


def _plots(r: dict[str, Any], out: Path, name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = r["config"]["groups"]
    scen = [s for s in r["scenarios"] if s.get("steps")]
    if not scen:
        return []
    colors = {"raw": "tab:gray", "beseda": "tab:blue", "socketio": "tab:orange"}
    paths: list[Path] = []

    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=False):
        top, low = 1.0, float("inf")
        for s in [x for x in scen if x["group"] == g]:
            st = sorted(s["steps"], key=lambda x: x["offered_rate"])
            xs = [x["offered_rate"] for x in st]
            c = colors.get(s["target"])
            ax.plot(xs, [x["delivery_rate"] for x in st], "-", color=c, label=f"{s['target']} deliveries/s")
            ax.plot(xs, [x["ack_rate"] for x in st], "--", color=c, label=f"{s['target']} acks/s")
            for x in st:
                ax.plot(x["offered_rate"], x["delivery_rate"], "o", color=c,
                        fillstyle="full" if x["sustained"] else "none")
            top, low = max([top, *xs]), min([low, *xs])
        low = low if low < top else 1.0
        ax.plot([low, top], [low * (g - 1), top * (g - 1)], ":", color="k", lw=0.8, label="ideal deliveries")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"chats of {g}: received vs offered (filled = sustained)")
        ax.set_xlabel("offered messages/s")
        ax.set_ylabel("received per second")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / f"{name}-throughput.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    ax = axes[0]
    for s in scen:
        st = sorted(s["steps"], key=lambda x: x["offered_rate"])
        c = colors.get(s["target"])
        ls = "-" if s["group"] == groups[0] else "--"
        ax.plot([x["offered_rate"] for x in st], [x["delivery_ms"].get("p99", float("nan")) for x in st],
                ls, marker="o", ms=3, color=c, label=f"{s['target']} g{s['group']} delivery p99")
        ax.plot([x["offered_rate"] for x in st], [x["delivery_ms"].get("p50", float("nan")) for x in st],
                ls, marker=".", lw=0.7, alpha=0.6, color=c, label=f"{s['target']} g{s['group']} p50")
    ax.axhline(r["config"]["p99_limit_ms"], color="r", lw=0.8, ls=":", label="p99 limit")
    ax.set_xscale("log")
    ax.set_yscale("log")  # the limit line is always positive
    ax.set_xlabel("offered messages/s")
    ax.set_ylabel("send→delivery ms")
    ax.set_title("delivery latency along the ramp")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    ax = axes[1]
    lat = [s for s in scen if s.get("latency")]
    labels, width = [], 0.2
    for i, s in enumerate(lat):
        L = s["latency"]
        vals = [L["ack_ms"].get("p50", 0), L["ack_ms"].get("p99", 0),
                L["delivery_ms"].get("p50", 0), L["delivery_ms"].get("p99", 0)]
        for j, v in enumerate(vals):
            ax.bar(i + (j - 1.5) * width, v, width, color=f"C{j}",
                   label=["ack p50", "ack p99", "delivery p50", "delivery p99"][j] if i == 0 else None)
        labels.append(f"{s['target']}\ng{s['group']}\n@{L['offered_rate']:.0f}/s")
    ax.set_xticks(range(len(lat)), labels, fontsize=8)
    if any(s["latency"]["delivery_ms"].get("p99") for s in lat):
        ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title("latency at half the peak")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / f"{name}-latency.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6, 4))
    rs = [s for s in r["scenarios"] if s.get("rss_per_connection") is not None]
    ax.bar(range(len(rs)), [s["rss_per_connection"] / 1024 for s in rs],
           color=[colors.get(s["target"], "C0") for s in rs])
    for i, s in enumerate(rs):
        ax.text(i, s["rss_per_connection"] / 1024, f"{s['rss_per_connection'] / 1024:.1f}",
                ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rs)), [f"{s['target']}\ng{s['group']}" for s in rs])
    ax.set_ylabel("KiB per idle connection")
    ax.set_title("server RSS per idle authenticated connection")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    p = out / f"{name}-rss.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths
