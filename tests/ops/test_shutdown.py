"""A stopping node does not hang on a shutdown step that never finishes."""

from __future__ import annotations

import asyncio
import logging

from wsserver import app as app_mod


async def test_a_bus_that_never_stops_does_not_keep_the_node_alive(node_factory, monkeypatch, caplog):
    monkeypatch.setattr(app_mod, "STOP_PART_TIMEOUT_S", 0.5)
    caplog.set_level(logging.INFO, logger="wsserver.app")
    node = await node_factory()
    released = asyncio.Event()
    real_stop = node.bus.stop

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()  # a bus connection that never answers
        finally:
            released.set()

    node.bus.stop = stuck
    try:
        await node.stop(timeout=1)
        await asyncio.wait_for(released.wait(), 5)  # the stuck step was cancelled
    finally:
        node.bus.stop = real_stop  # the fixture's own stop then closes the bus
    assert "node.stop_abandoned part=bus" in caplog.text
    assert "node.stopped" in caplog.text
    assert node.pool._closed  # the rest of the shutdown ran
