"""The operations files: alert rules, dashboard, Dockerfile, compose file and docs
agree with the code (metric names, env variables, health endpoints)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import wsserver.metrics  # noqa: F401  (registers every beseda_ metric)
from wsserver.config import Settings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "ops" / "beseda.rules.yml"
DASHBOARD = ROOT / "docs" / "ops" / "beseda-dashboard.json"
OPS_MD = ROOT / "docs" / "ops.md"
CONFIG_MD = ROOT / "docs" / "config.md"
METRIC_REF = re.compile(r"\b((?:beseda|process)_[a-z0-9_]+)")
# Series Prometheus itself adds to every target.
PROMETHEUS_SERIES = {"up"}


def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


def exported_series() -> set[str]:
    """Every series name our registry can expose, suffixes included."""
    names = set(PROMETHEUS_SERIES)
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def beseda_families() -> set[str]:
    return {f.name for f in REGISTRY.collect() if f.name.startswith("beseda_")}


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def ops_anchors() -> set[str]:
    return {
        slug(line.lstrip("#")) for line in OPS_MD.read_text().splitlines() if line.startswith("#")
    }


def rule_exprs() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


# -- alert rules ----------------------------------------------------------------------


def test_alert_rules_pass_promtool_check():
    """`promtool check rules` accepts the rules file."""
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`, or set PROMTOOL)")
    result = subprocess.run(
        [tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_their_unit_test_series():
    """`promtool test rules`: pool saturation, database unreachable, sends failing and
    slow acks fire when they should and stay silent before."""
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`, or set PROMTOOL)")
    result = subprocess.run(
        [tool, "test", "rules", str(RULES.with_name("beseda.rules.test.yml"))],
        capture_output=True, text=True, timeout=60, cwd=RULES.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_use_only_exported_metrics_and_link_a_runbook():
    """Every metric an alert reads is one we export; each alert has a severity and a
    runbook anchor that exists in docs/ops.md."""
    exported = exported_series()
    anchors = ops_anchors()
    rules = rule_exprs()
    assert len(rules) >= 10
    for rule in rules:
        names = set(METRIC_REF.findall(rule["expr"])) | (
            PROMETHEUS_SERIES & set(re.findall(r"\b\w+\b", rule["expr"]))
        )
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], names - exported)
        assert rule["labels"]["severity"] in ("page", "ticket")
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/ops.md#")
        assert runbook.split("#", 1)[1] in anchors, (rule["alert"], runbook)


# -- dashboard ------------------------------------------------------------------------


def test_dashboard_queries_only_exported_metrics():
    """The dashboard parses, its panel ids are unique, and each query reads metrics
    we export; together the panels show every beseda_ metric family."""
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    exported = exported_series()
    used: set[str] = set()
    for expr in dashboard_exprs():
        names = set(METRIC_REF.findall(expr))
        assert names and names <= exported, (expr, names - exported)
        used |= names
    shown = {f for f in beseda_families() if any(n.startswith(f) for n in used)}
    assert shown == beseda_families(), beseda_families() - shown


def test_dashboard_queries_parse_with_promtool(tmp_path):
    """Each dashboard query, with Grafana's variables filled in, is valid PromQL."""
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`, or set PROMTOOL)")
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- docs ------------------------------------------------------------------------------


def test_ops_doc_describes_every_metric():
    """docs/ops.md names every beseda_ metric family."""
    text = OPS_MD.read_text()
    missing = [name for name in sorted(beseda_families()) if f"`{name}" not in text]
    assert not missing


def test_config_doc_lists_every_environment_variable():
    """docs/config.md lists every variable config.py and db.py read."""
    source = "".join(
        (ROOT / "wsserver" / name).read_text() for name in ("config.py", "db.py")
    )
    names = set(re.findall(r'"((?:BESEDA|DATABASE|REDIS)_[A-Z0-9_]+)"', source))
    assert len(names) > 30
    text = CONFIG_MD.read_text()
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing


# -- container -------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (instruction, arguments), continuations joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args.strip()))
    return stages


def test_dockerfile_is_multi_stage_and_runs_as_non_root():
    """Two stages; the runtime stage copies from the build stage, runs as a numeric
    non-root user, and exposes the WebSocket and HTTP ports."""
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert any(i == "COPY" and a.startswith("--from=build") for i, a in final)
    users = [a for i, a in final if i == "USER"]
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()
    exposed = {a for i, args in final if i == "EXPOSE" for a in args.split()}
    assert {"8765", "8080"} <= exposed
    assert ("ENTRYPOINT", '["beseda"]') in final and ("CMD", '["serve"]') in final


def test_dockerfile_defaults_for_a_container():
    """BESEDA_HOST=0.0.0.0 in the image, the migrations path set, and no database or
    Redis address nor any secret baked in."""
    env: dict[str, str] = {}
    for instruction, args in dockerfile_stages()[-1]:
        if instruction == "ENV":
            for part in shlex.split(args):
                key, _, value = part.partition("=")
                env[key] = value
    assert env["BESEDA_HOST"] == "0.0.0.0"
    assert env["BESEDA_SQL_DIR"] == "/app/sql"
    for name in ("DATABASE_URL", "REDIS_URL", "BESEDA_JWT_SECRET"):
        assert name not in env
    for instruction, args in dockerfile_stages()[-1]:
        if instruction == "COPY" and not args.startswith("--from"):
            assert (ROOT / args.split()[0]).exists(), args


def healthcheck_command() -> list[str]:
    for instruction, args in dockerfile_stages()[-1]:
        if instruction == "HEALTHCHECK":
            return json.loads(args[args.index("CMD") + 3:].strip())
    raise AssertionError("no HEALTHCHECK")


def test_dockerfile_healthcheck_probes_readyz():
    """The HEALTHCHECK asks /readyz on the configured HTTP port."""
    command = healthcheck_command()
    assert command[0] == "python" and "/readyz" in command[-1]
    assert "BESEDA_HTTP_PORT" in command[-1]


async def test_dockerfile_healthcheck_command_passes_on_a_ready_node(node):
    """The HEALTHCHECK's own command exits 0 against a ready node, 1 on a port where
    nothing listens."""
    from wsserver.embedded_pg import free_port

    command = [sys.executable] + healthcheck_command()[1:]

    def run(port: int) -> int:
        env = {**os.environ, "BESEDA_HTTP_PORT": str(port)}
        return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode

    import asyncio

    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, run, node.http_port) == 0
    assert await loop.run_in_executor(None, run, free_port()) != 0


def test_settings_read_container_defaults_from_the_environment(monkeypatch):
    """The image's BESEDA_HOST reaches Settings; without it the server stays on
    loopback."""
    monkeypatch.setenv("BESEDA_HOST", "0.0.0.0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db.invalid/beseda")
    s = Settings.from_env()
    assert s.host == "0.0.0.0" and s.database_url == "postgresql://u@db.invalid/beseda"
    monkeypatch.delenv("BESEDA_HOST")
    assert Settings.from_env().host == "127.0.0.1"


def test_compose_runs_beseda_with_postgres_and_redis():
    """Three services; Beseda waits for healthy PostgreSQL and Redis, reaches them by
    service name, and takes its secrets from the environment only."""
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"beseda", "postgres", "redis"}
    beseda = services["beseda"]
    assert beseda["build"] == "."
    assert {k: v["condition"] for k, v in beseda["depends_on"].items()} == {
        "postgres": "service_healthy", "redis": "service_healthy",
    }
    env = beseda["environment"]
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert env["BESEDA_JWT_SECRET"].startswith("${")
    assert "${POSTGRES_PASSWORD" in env["DATABASE_URL"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${")
    for service in ("postgres", "redis"):
        assert "healthcheck" in services[service]
    for port in beseda["ports"]:
        assert port.startswith("127.0.0.1:")
