"""Metrics move when their events happen, and every label stays bounded."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
import websockets

from tests.helpers import WsClient, send_data
from tests.ops.scrape import delta, scrape, value, wait_for_metric
from wsserver import metrics

ALLOWED_LABELS = {
    "outcome", "code", "type", "result", "kind", "reason", "state", "dependency",
    "version", "le", "generation",
}


async def test_send_moves_request_counters_and_latency_histograms(world, node):
    """One message.send: its counter, the three latency histograms, the writer."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, wb = await world.connect(a), await world.connect(b)
    before = await scrape(node.http_port)

    await wa.ok("message.send", send_data(chat, "m-1", "metric canary"))
    await wb.event("chat.message.new")
    after = await scrape(node.http_port)

    assert delta(before, after, "beseda_requests_total", type="message.send", result="ok") == 1
    for hist in (
        "beseda_send_to_commit_seconds", "beseda_send_to_ack_seconds",
        "beseda_commit_to_delivery_seconds",
    ):
        assert delta(before, after, f"{hist}_count") == 1, hist
        assert delta(before, after, f"{hist}_sum") > 0, hist
    assert delta(before, after, "beseda_writer_batch_size_count") >= 1
    assert delta(before, after, "beseda_writer_batch_seconds_count") >= 1
    assert delta(before, after, "beseda_events_sent_total", kind="message") >= 1
    assert delta(before, after, "beseda_events_sent_total", kind="ack") >= 1
    assert delta(before, after, "beseda_db_pool_acquire_seconds_count") >= 1
    assert value(after, "beseda_connections_open") >= 2
    assert value(after, "beseda_db_pool_connections", state="max") == node.settings.db_pool_max
    assert value(after, "beseda_build_info", version=__import__("wsserver").__version__) == 1


async def test_connections_and_handshakes_are_counted_by_outcome(world, node):
    """An accepted socket opens the gauge, a bad token counts as an auth rejection."""
    before = await scrape(node.http_port)
    u = await world.user()
    client = await world.connect(u)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await WsClient.connect(world.ws_url, "not-a-token")
    assert refused.value.response.status_code == 401
    mid = await scrape(node.http_port)
    assert delta(before, mid, "beseda_handshakes_total", outcome="ok") == 1
    assert delta(before, mid, "beseda_handshakes_total", outcome="unauthorized") == 1
    assert delta(before, mid, "beseda_rejections_total", reason="auth") == 1
    assert delta(before, mid, "beseda_connections_open") == 1

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.ws_port}") as http:
        assert (await http.get("/elsewhere", timeout=10)).status_code == 404
        plain = await http.get(
            "/ws", headers={"Authorization": f"Bearer {world.token(u)}"}, timeout=10
        )
        assert plain.status_code in (400, 426)
    mid2 = await scrape(node.http_port)
    assert delta(mid, mid2, "beseda_handshakes_total", outcome="not_found") == 1
    assert delta(mid, mid2, "beseda_handshakes_total", outcome="failed") == 1

    await client.close()
    after = await wait_for_metric(
        node.http_port,
        lambda s: delta(before, s, "beseda_connection_closes_total", code="1000") == 1,
    )
    assert delta(before, after, "beseda_connections_open") == 0


async def test_rate_limited_client_bumps_rejections(node_factory, new_id):
    """Each request refused by the token bucket is one `rate` rejection."""
    from tests.helpers import World

    node = await node_factory(rate_per_s=0.5, rate_burst=2, rate_violations_before_close=100)
    world = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
    try:
        u = await world.user()
        chat = await world.chat([u, await world.user()])
        client = await world.connect(u)
        before = await scrape(node.http_port)
        replies = [
            await client.request("messages.history", {"chat_id": chat, "limit": 1})
            for _ in range(6)
        ]
        limited = [r for r in replies if r["type"] == "error"]
        assert limited and all(r["error"]["code"] == "rate_limited" for r in limited)
        assert all(r["error"]["retry_after_ms"] > 0 for r in limited)
        after = await scrape(node.http_port)
        assert delta(before, after, "beseda_rejections_total", reason="rate") == len(limited)
        assert delta(
            before, after, "beseda_requests_total", type="messages.history", result="rate_limited"
        ) == len(limited)
    finally:
        await world.close()


async def test_pool_saturation_shows_in_metrics(node_factory, new_id):
    """BC-24: with every pool connection stuck on a lock (the writer lane's and two
    readers'), /metrics shows them busy and a waiter; the waiter gets `unavailable`
    and counts an acquire timeout."""
    import asyncpg

    from tests.helpers import World

    node = await node_factory(
        db_pool_min=1, db_pool_max=3, writer_lanes=1, db_acquire_timeout_s=0.5
    )
    world = World(node.dsn, node.settings, f"ws://127.0.0.1:{node.ws_port}/ws", new_id)
    locker = await asyncpg.connect(node.dsn)
    try:
        a, b = await world.user(), await world.user()
        chat = await world.chat([a, b])
        wa = await world.connect(a)
        before = await scrape(node.http_port)
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        pending_send = wa.send_nowait("message.send", send_data(chat, "stuck", "x"))
        await wait_for_metric(
            node.http_port,
            lambda s: value(s, "beseda_db_pool_connections", state="busy") == 1,
        )
        stuck = [
            wa.send_nowait("messages.history", {"chat_id": chat, "limit": 1}) for _ in range(2)
        ]
        await wait_for_metric(
            node.http_port,
            lambda s: value(s, "beseda_db_pool_connections", state="busy") == 3,
        )
        history = wa.send_nowait("messages.history", {"chat_id": chat, "limit": 1})
        saturated = await wait_for_metric(
            node.http_port, lambda s: value(s, "beseda_db_pool_waiting") >= 1
        )
        assert value(saturated, "beseda_db_pool_connections", state="idle") == 0
        reply = await history
        assert reply["type"] == "error" and reply["error"]["code"] == "unavailable"
        await tx.rollback()
        ack = await pending_send
        assert ack["type"] == "ack"
        assert [(await s)["type"] for s in stuck] == ["ack", "ack"]
        after = await scrape(node.http_port)
        assert delta(before, after, "beseda_db_errors_total", kind="acquire_timeout") >= 1
        assert value(after, "beseda_db_pool_waiting") == 0
    finally:
        await locker.close()
        await world.close()


async def test_metric_labels_are_bounded_and_carry_no_ids(world, node):
    """After traffic, every beseda_ sample uses known label names and values; no
    user or chat id appears as a label value."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa, _wb = await world.connect(a), await world.connect(b)
    await wa.ok("message.send", send_data(chat, "lbl", "labels"))
    await wa.request("messages.history", {"chat_id": 999_999_999, "limit": 1})
    samples = await scrape(node.http_port)
    ids = {str(a), str(b), str(chat), "999999999"}
    seen = 0
    for (name, labels) in samples:
        if not name.startswith("beseda_"):
            continue
        seen += 1
        for key, val in labels:
            assert key in ALLOWED_LABELS, (name, key)
            if key == "generation":  # small numbers that may equal a test's chat id
                assert val in {"0", "1", "2"}, (name, val)
                continue
            assert val not in ids, (name, key, val)
            if key == "outcome":
                assert val in metrics.HANDSHAKE_OUTCOMES
            if key == "reason":
                assert val in metrics.REJECTION_REASONS
            if key == "code":
                assert re.fullmatch(r"\d{4}", val)
    assert seen > 20


def test_metric_names_follow_prometheus_conventions():
    """One prefix, snake case, counters end in _total, units spelt out."""
    from prometheus_client import REGISTRY

    for family in REGISTRY.collect():
        if not family.name.startswith("beseda_"):
            continue
        assert re.fullmatch(r"beseda_[a-z0-9_]+", family.name), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes", "_size")), family.name


async def test_event_loop_lag_is_sampled_and_sees_a_blocked_loop(node):
    """The lag histogram fills by itself, and a loop blocked for 500 ms shows up in
    a bucket above 250 ms (an in-process node shares the test's loop)."""
    before = await scrape(node.http_port)
    await asyncio.sleep(0.35)
    time.sleep(0.5)  # block the loop the node runs on: its timer fires >= 0.4 s late
    await asyncio.sleep(0.25)
    after = await scrape(node.http_port)
    assert delta(before, after, "beseda_event_loop_lag_seconds_count") >= 3
    slow = (delta(before, after, "beseda_event_loop_lag_seconds_count")
            - delta(before, after, "beseda_event_loop_lag_seconds_bucket", le="0.25"))
    assert slow >= 1
