"""messages.history pages forward (after_seq) and back (before_seq) with has_more,
gap-free and without overlap, and never sends a page the socket cannot take."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import send_data

FAST = {"rate_per_s": 100_000.0, "rate_burst": 100_000, "max_pending_requests": 1000}
TOTAL = 250


async def chat_with(world: Any, n: int, text: str = "m") -> tuple[int, Any]:
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    for start in range(0, n, 50):
        futs = [
            wa.send_nowait("message.send", send_data(chat, f"k{i}", f"{text}{i}"))
            for i in range(start, min(n, start + 50))
        ]
        assert all(r["type"] == "ack" for r in await asyncio.gather(*futs))
    return chat, await world.connect(b)


async def test_history_pages_forward_with_after_seq_when_250_messages(world_with):
    """after_seq 0, 100, 200: 1-100, 101-200, 201-250; has_more true, true, false."""
    world = await world_with(**FAST)
    chat, wb = await chat_with(world, TOTAL)
    pages = []
    after = 0
    while True:
        page = await wb.ok(
            "messages.history", {"chat_id": chat, "after_seq": after, "limit": 100}
        )
        pages.append(page)
        if not page["has_more"]:
            break
        after = page["messages"][-1]["seq"]
    assert [[m["seq"] for m in p["messages"]] for p in pages] == [
        list(range(1, 101)),
        list(range(101, 201)),
        list(range(201, 251)),
    ]
    assert [p["has_more"] for p in pages] == [True, True, False]
    assert pages[0]["messages"][0]["content"][pages[0]["messages"][0]["lang"]] == "m0"
    tail = await wb.ok(
        "messages.history", {"chat_id": chat, "after_seq": TOTAL, "limit": 100}
    )
    assert tail == {"messages": [], "has_more": False}


async def test_history_pages_back_with_before_seq_when_250_messages(world_with):
    """No cursor, then before_seq 151, 51: 151-250, 51-150, 1-50, ascending in each page."""
    world = await world_with(**FAST)
    chat, wb = await chat_with(world, TOTAL)
    pages = [await wb.ok("messages.history", {"chat_id": chat, "limit": 100})]
    while pages[-1]["has_more"]:
        before = pages[-1]["messages"][0]["seq"]
        pages.append(
            await wb.ok(
                "messages.history",
                {"chat_id": chat, "before_seq": before, "limit": 100},
            )
        )
    assert [[m["seq"] for m in p["messages"]] for p in pages] == [
        list(range(151, 251)),
        list(range(51, 151)),
        list(range(1, 51)),
    ]
    assert [p["has_more"] for p in pages] == [True, True, False]
    exact = await wb.ok(
        "messages.history", {"chat_id": chat, "before_seq": 101, "limit": 100}
    )
    assert [m["seq"] for m in exact["messages"]] == list(range(1, 101)) and exact[
        "has_more"
    ] is False


@pytest.mark.parametrize(
    "data, field",
    [
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"before_seq": 5, "after_seq": 1}, "before_seq"),
        ({"after_seq": -1}, "after_seq"),
        ({"after_seq": "5"}, "after_seq"),
        ({"limit": True}, "limit"),
    ],
)
async def test_history_is_bad_request_naming_field_when_paging_is_invalid(
    world, data, field
):
    """Out-of-range or ill-typed paging parameters are bad_request by name."""
    a, b = await world.user(), await world.user()
    chat = await world.chat([a, b])
    wa = await world.connect(a)
    reply = await wa.request("messages.history", {"chat_id": chat, **data})
    assert reply["type"] == "error" and reply["error"]["code"] == "bad_request"
    assert field in reply["error"]["message"]


async def test_history_of_large_messages_pages_by_size_and_keeps_socket(world_with):
    """Forty 30 KB messages do not fit one reply: pages come shorter, with has_more,
    gap-free both ways, and the socket is never shed."""
    world = await world_with(**FAST)
    chat, wb = await chat_with(world, 40, text="ж" * 15_000)
    forward: list[int] = []
    after, pages = 0, 0
    while True:
        page = await wb.ok(
            "messages.history", {"chat_id": chat, "after_seq": after, "limit": 100}
        )
        pages += 1
        forward += [m["seq"] for m in page["messages"]]
        if not page["has_more"]:
            break
        after = page["messages"][-1]["seq"]
    assert forward == list(range(1, 41)) and pages > 1
    backward: list[int] = []
    page = await wb.ok("messages.history", {"chat_id": chat, "limit": 100})
    backward = [m["seq"] for m in page["messages"]]
    while page["has_more"]:
        page = await wb.ok(
            "messages.history",
            {"chat_id": chat, "before_seq": backward[0], "limit": 100},
        )
        backward = [m["seq"] for m in page["messages"]] + backward
    assert backward == list(range(1, 41))
    assert not wb.closed.is_set()
