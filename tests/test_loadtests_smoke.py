"""The load harness end to end, tiny and bounded: raw server + load client workers.

20 sockets in chats of 2 and of 5, 200 messages each; every message must be acked
once and delivered to every other member exactly once. No timing limits are asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("picows")
pytest.importorskip("psutil")

from loadtests.client import LoadClient  # noqa: E402
from loadtests.targets import RawTarget  # noqa: E402


@pytest.mark.parametrize("group", [2, 5])
def test_raw_server_delivers_every_message(tmp_path: Path, group: int) -> None:
    target = RawTarget(tmp_path)
    target.start(users=20, group=group, profile=False)
    try:
        with LoadClient(workers=2) as client:
            conn = client.connect(target.specs(), target.codec)
            assert conn["connected"] == 20, conn
            # 200 messages over 2 s, then up to 20 s for the last of them to land.
            res = client.run_step(0, rate=100.0, duration=2.0, fanout=group - 1, drain_max=20.0)
            assert 190 <= res["sent"] <= 201
            assert res["errors"] == 0, res["error_samples"]
            assert res["disconnected"] == 0
            assert res["acks"] == res["sent"]
            assert res["deliveries"] == res["sent"] * (group - 1)
            assert res["expected_deliveries"] == res["deliveries"]
            assert res["drained_after_s"] is not None
            assert len(res["ack_ms"]) > 0 and res["ack_ms"]["p50"] > 0
            client.close_sockets()
    finally:
        target.stop()
    assert "raw_server listening" in (tmp_path / "server-raw.log").read_text()


def test_report_renders_without_beseda(tmp_path: Path) -> None:
    """A report from a fake result: sections present, missing batch metric said plainly."""
    from loadtests.report import write_report

    step = {
        "kind": "ramp", "offered_rate": 100.0, "send_rate": 100.0, "ack_rate": 100.0,
        "delivery_rate": 100.0, "sent": 200, "acks": 200, "acks_in_window": 200,
        "deliveries": 200, "expected_deliveries": 200, "errors": 0, "error_samples": [],
        "disconnected": 0, "drained_after_s": 0.01, "client_cpu_pct": [5.0, 5.0],
        "ack_ms": {"p50": 1.0, "p99": 2.0}, "delivery_ms": {"p50": 1.0, "p99": 2.0, "max": 3.0},
        "server_cpu_pct": 10.0, "aux_cpu_pct": None, "other_cpu_pct": 1.0, "batch_size": None,
        "sustained": True, "why_not": [],
    }
    scen = {"target": "beseda", "group": 2, "sockets": 20, "steps": [step], "peak_rate": 100.0,
            "peak_step": {k: step[k] for k in ("send_rate", "ack_rate", "delivery_rate",
                                               "server_cpu_pct", "client_cpu_pct")},
            "latency": dict(step, kind="latency", offered_rate=50.0), "rss_per_connection": 12800.0,
            "metrics_exposed": True, "batch_metric_exposed": False}
    report = {
        "command": "python -m loadtests.run --quick", "started_utc": "2026-01-01T00:00:00+00:00",
        "wall_s": 60.0, "scenarios": [scen, dict(scen, target="raw")], "target_notes": {},
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 24, "load_avg_at_start": (0, 0, 0),
                    "kernel": "k", "python": sys.version.split()[0], "versions": {},
                    "git_commit": "abc"},
        "config": {"groups": [2], "sockets": 20, "step_s": 2.0, "factor": 2.0,
                   "start_deliveries": 1000.0, "keep_ratio": 0.95, "drain_s": 2.0,
                   "p99_limit_ms": 250.0, "latency_s": 4.0, "workers": 2},
    }
    paths = write_report(report, tmp_path, "t", plots=False)
    md = (tmp_path / "t.md").read_text()
    assert "not exposed" in md and "Ratios to the raw ceiling" in md
    assert "| beseda | 100 | 100 | 1.00× |" in md
    assert [p.name for p in paths] == ["t.md", "t.json"]


def test_report_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from loadtests.report import write_report

    test_report_renders_without_beseda(tmp_path)
    import json

    report = json.loads((tmp_path / "t.json").read_text())
    paths = write_report(report, tmp_path, "p")
    assert [p.suffix for p in paths] == [".md", ".json", ".png", ".png", ".png"]
    assert all(p.stat().st_size > 1000 for p in paths[2:])
