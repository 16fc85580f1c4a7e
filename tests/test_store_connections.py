"""`Store.connection` keeps the connections it is given back and hands them out
again itself; these pin when one goes back to the pool instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from wsserver.errors import NotFound
from wsserver.store import Store


@pytest.fixture
async def pool(shared_db: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(
        shared_db, min_size=1, max_size=2, init=Store.connection_init(),
        reset=Store.connection_reset(),
    )
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def backend_pid(store: Store) -> int:
    async with store.connection() as conn:
        return int(await conn.fetchval("SELECT pg_backend_pid()"))


async def test_a_given_back_connection_is_kept_and_handed_out_again(pool):
    """One block after another runs on the same connection, which the pool sees
    as in use; `close` gives it back, so that the pool can close."""
    store = Store(pool, keep_idle_s=60)
    first = await backend_pid(store)
    assert store.idle_kept == 1 and pool.get_idle_size() == 0
    assert await backend_pid(store) == first
    await store.close()
    assert store.idle_kept == 0 and pool.get_idle_size() == pool.get_size()
    await backend_pid(store)
    assert store.idle_kept == 0  # closed: keeps no more


async def test_without_keep_idle_every_connection_goes_back_to_the_pool(pool):
    store = Store(pool)
    await backend_pid(store)
    assert store.idle_kept == 0 and pool.get_idle_size() == pool.get_size()


async def test_a_task_waiting_for_the_pool_gets_the_next_connection_given_back(pool):
    """With every pool connection in a block, a third block waits for the pool;
    the first connection given back goes to the pool, not to the store's idle
    ones, so the waiter gets it at once rather than at its acquire timeout."""
    store = Store(pool, keep_idle_s=60, acquire_timeout_s=5)
    release = asyncio.Event()
    held = 0

    async def hold() -> None:
        nonlocal held
        async with store.connection():
            held += 1
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    while held < 2:
        await asyncio.sleep(0.01)
    waiter = asyncio.create_task(backend_pid(store))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    release.set()
    await asyncio.wait_for(waiter, 1)
    await asyncio.gather(*holders)
    await store.close()


async def test_a_block_that_raised_gives_its_connection_to_the_pool(pool):
    store = Store(pool, keep_idle_s=60)
    with pytest.raises(NotFound):
        async with store.connection() as conn:
            await conn.fetchval("SELECT 1")
            raise NotFound("nothing here")
    assert store.idle_kept == 0 and pool.get_idle_size() == pool.get_size()


async def test_a_transaction_left_open_is_not_kept(pool):
    store = Store(pool, keep_idle_s=60)
    async with store.connection() as conn:
        await conn.execute("BEGIN")
    assert store.idle_kept == 0
    async with store.connection() as conn:
        assert not conn.is_in_transaction()
    await store.close()


async def test_a_closed_connection_is_not_handed_out(pool, shared_db):
    """A kept connection the server closed meanwhile goes back to the pool, and
    the block gets a working one."""
    store = Store(pool, keep_idle_s=60)
    first = await backend_pid(store)
    other = await asyncpg.connect(shared_db)
    try:
        await other.fetchval("SELECT pg_terminate_backend($1)", first)
    finally:
        await other.close()

    async def pool_took_it_back() -> None:  # and opened another for its min_size
        while not pool.get_idle_size():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(pool_took_it_back(), 10)
    assert await backend_pid(store) != first
    await store.close()


async def test_a_connection_kept_idle_too_long_goes_back_to_the_pool(pool):
    """The oldest kept connection goes back once it has been idle longer than
    `keep_idle_s` (checked when another is given back)."""
    store = Store(pool, keep_idle_s=0.2)
    release = asyncio.Event()

    async def hold() -> None:
        async with store.connection() as conn:
            await conn.fetchval("SELECT 1")
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(*holders)
    assert store.idle_kept == 2
    await asyncio.sleep(0.3)
    await backend_pid(store)
    assert store.idle_kept == 1 and pool.get_idle_size() == 1
    await store.close()
