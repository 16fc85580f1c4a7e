"""The OpenAPI document: kept in the repo, served, complete; and property-based
requests generated from it (schemathesis) never get a 5xx."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from restadapter import openapi

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
EXAMPLES_PER_OPERATION = 30


def test_openapi_document_in_repo_is_current():
    """docs/openapi.json is what `python -m restadapter.openapi` builds."""
    assert DOC.read_text() == openapi.render()


async def test_openapi_is_served_and_lists_every_route(node, http):
    r = await http.get("/openapi.json")
    assert r.status_code == 200 and r.json() == json.loads(DOC.read_text())
    app = node._http.config.app
    routes = {
        (route.path, method.lower())
        for route in app.routes
        for method in (route.methods or ()) if method != "HEAD"
    }
    documented = {(p, m) for p, ops in r.json()["paths"].items() for m in ops if m != "parameters"}
    assert routes == documented


def _fuzz(base_url: str, tokens: dict[str, str]) -> list[str]:
    """Runs in a worker thread while the node serves on the test's event loop."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(openapi.build())
    failures: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        path = op.path
        if path.startswith("/internal/") and "attachments" not in path:
            token = tokens["service"]
        elif path.startswith("/api/v1/client"):
            token = tokens["client"]
        elif path.startswith("/api/v1/manager"):
            token = tokens["manager"]
        else:
            token = tokens["buyer"]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), derandomize=True)
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}  # noqa: B023
                response = case.call(base_url=base_url, timeout=30)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:200]}"
                    )

            try:
                check()
            except Unsatisfiable:
                # Nothing in this operation can be made invalid (e.g. /healthz).
                assert mode is GenerationMode.NEGATIVE, op.label
    return failures


@pytest.mark.slow
async def test_generated_requests_never_get_a_server_error(node, world, api):
    buyer, client, manager = await world.user(), await world.user("client"), await world.user("manager")
    await world.chat([buyer, client, manager], name="fuzz me")
    tokens = {
        "buyer": world.token(buyer), "client": world.token(client, "client"),
        "manager": world.token(manager, "manager"), "service": api.service_token(),
    }
    failures = await asyncio.to_thread(_fuzz, f"http://127.0.0.1:{node.http_port}", tokens)
    assert failures == []
