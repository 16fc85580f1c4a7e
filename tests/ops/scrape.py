"""Reading a node's /metrics the way Prometheus does, for before/after deltas."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http_port: int) -> Samples:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
        response = await client.get("/metrics", timeout=10)
    response.raise_for_status()
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def wait_for_metric(
    http_port: int, check: Callable[[Samples], bool], timeout: float = 15.0
) -> Samples:
    """Scrapes until `check` holds (the counters that move after a close do so once
    the closing handshake ends); fails after `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = await scrape(http_port)
        if check(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("metric condition never held")
        await asyncio.sleep(0.05)


async def get_json(http_port: int, path: str) -> tuple[int, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
        response = await client.get(path, timeout=10)
    return response.status_code, response.json()
