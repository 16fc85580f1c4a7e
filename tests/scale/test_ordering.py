"""The hold-back sequencer alone: no sockets, no Redis, a fake fill query."""

from __future__ import annotations

import asyncio

from wsserver.ordering import Held, Sequencer

U, C = 7, 100


class Rig:
    def __init__(self, rows: dict[int, bytes] | None = None, fail: int = 0) -> None:
        self.rows = rows or {}
        self.fail = fail
        self.out: list[tuple[int, int, bytes]] = []
        self.gave_up: list[int] = []
        self.fills: list[tuple[int | None, int, float]] = []
        self.done = asyncio.Event()
        self.seq = Sequencer(self.fill, self.emit, self.gave_up.append, hold_s=0.01)

    async def fill(self, chat_id, after, before, lookback):
        self.fills.append((after, before, lookback))
        if self.fail:
            self.fail -= 1
            raise OSError("db down")
        lo = after + 1 if after is not None else min(self.rows, default=before)
        return [(s, None, self.rows[s]) for s in range(lo, before) if s in self.rows]

    def emit(self, user_id: int, chat_id: int, seq: int, held: Held) -> None:
        self.out.append((user_id, seq, held.frame))
        self.done.set()

    def offer(self, seq: int, user: int = U) -> None:
        self.seq.offer(user, C, seq, b"f%d" % seq, None, None)

    async def until(self, n: int) -> None:
        async def wait() -> None:
            while len(self.out) < n:
                self.done.clear()
                await self.done.wait()

        await asyncio.wait_for(wait(), 5)


async def test_sequencer_emits_in_order_when_events_arrive_shuffled():
    rig = Rig()
    rig.seq.user_arrived(U)
    for s in (1, 3, 2, 5, 4):
        rig.offer(s)
    assert [s for _, s, _ in rig.out] == [1, 2, 3, 4, 5]
    assert rig.fills == []


async def test_sequencer_drops_duplicates():
    rig = Rig()
    rig.seq.user_arrived(U)
    for s in (1, 2, 2, 1, 3, 3):
        rig.offer(s)
    assert [s for _, s, _ in rig.out] == [1, 2, 3]


async def test_sequencer_fills_a_gap_from_the_database_after_the_hold():
    rig = Rig(rows={2: b"db2", 3: b"db3"})
    rig.seq.user_arrived(U)
    rig.offer(1)
    rig.offer(4)
    await rig.until(4)
    assert [(s, f) for _, s, f in rig.out] == [
        (1, b"f1"),
        (2, b"db2"),
        (3, b"db3"),
        (4, b"f4"),
    ]
    assert rig.fills == [(1, 4, 0.0)]


async def test_sequencer_takes_a_baseline_from_recent_rows_when_first_event_is_not_seq_1():
    rig = Rig(rows={4: b"db4"})
    rig.seq.user_arrived(U)
    rig.offer(5)
    await rig.until(2)
    assert [s for _, s, _ in rig.out] == [4, 5]
    after, before, lookback = rig.fills[0]
    assert after is None and before == 5 and 0 < lookback < 1


async def test_sequencer_retries_a_failed_fill_then_gives_up_with_resync():
    rig = Rig(rows={2: b"db2"}, fail=99)
    rig.seq.user_arrived(U)
    rig.offer(1)
    rig.offer(3)
    await rig.until(2)
    assert [s for _, s, _ in rig.out] == [1, 3]
    assert rig.gave_up == [U]


async def test_sequencer_ignores_users_without_a_socket_and_forgets_them():
    rig = Rig()
    rig.offer(1, user=99)
    assert rig.out == []
    rig.seq.user_arrived(U)
    rig.offer(1)
    rig.seq.forget_user(U)
    rig.offer(2)
    assert [s for _, s, _ in rig.out] == [1]
    assert rig.seq.pending() == 0
