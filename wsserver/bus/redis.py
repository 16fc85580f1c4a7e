"""Many nodes over Redis (or Redis Cluster): routing, presence, ordering, recovery.

Each node keeps its own sockets in the registry; Redis holds, per user, which nodes
serve them (`bs:u:{uid}`, a hash node -> generation) and, per node, a heartbeat in
`bs:nodes` (a sorted set scored by expiry on the Redis clock). An event is written
to local sockets at once and sent, once per batch, on the sharded channel of each
other node that serves a recipient (`SPUBLISH bs:n:{node}`); typing goes on a
sharded channel per chat (`bs:c:{chat}`). Every key and channel carries a hash tag,
so Redis Cluster spreads them. Design and measurements: docs/scale.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .. import metrics
from ..config import Settings
from ..errors import CloseCode
from ..ordering import Held, Sequencer
from ..presence import MemoryPresence
from ..protocol import messages as m
from ..registry import Registry
from . import fill
from .base import MessageHook

log = logging.getLogger(__name__)

KEY_NODES = "bs:nodes"


def key_user(user_id: int) -> str:
    return f"bs:u:{{{user_id}}}"


def key_node_users(node_id: str) -> str:
    return f"bs:nu:{{{node_id}}}"


def channel_node(node_id: str) -> str:
    return f"bs:n:{{{node_id}}}"


def channel_chat(chat_id: int) -> str:
    return f"bs:c:{{{chat_id}}}"


# One call per heartbeat: renew this node, list live nodes, claim expired ones.
_HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
return {added, live, expired}
"""

# Unregister only the registration we made: a newer one (a reconnect) stays.
_UNREGISTER_LUA = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Envelope kinds on the wire (msgpack arrays).
_EV_USERS = 0  # [0, kind, exclude, users, frame]
_EV_MESSAGE = 1  # [1, chat, seq, author, exclude, users, frame]
_EV_RESYNC = 2  # [2, users or None, window_s]
_EV_CHAT = 3  # [3, chat, user, typing, renew, origin, exclude, frame]

OUTBOX_MAX = 100_000
MISSED_MAX = 50_000
PUBLISH_BATCH = 256
RESTORE_MARGIN_S = 15.0
REGISTER_TIMEOUT_S = 1.0
LEAKED_ATTACH_S = 30.0
_REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


@dataclass(slots=True)
class _Out:
    kind: int
    users: list[int]
    frame: bytes
    exclude: str | None
    label: str = "event"
    chat_id: int = 0
    seq: int = 0
    author: int | None = None
    typing_user: int = 0
    typing: bool = False
    renew: bool = False


def make_client(url: str, cluster: bool, retries: int = 1) -> Any:
    """A client whose errors surface fast. Commands get one retry on a fresh
    connection (a pooled one may have died with a Redis restart); the subscriber
    gets none, so every lost subscription is seen and recovered (docs/scale.md)."""
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 2.0,
        "retry": Retry(NoBackoff(), retries),
        "health_check_interval": 0,
    }
    if cluster or url.startswith("redis+cluster://"):
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(
            url.replace("redis+cluster://", "redis://"), **kwargs
        )
    return Redis.from_url(url, **kwargs)


class RedisBus:
    name = "redis"

    def __init__(
        self,
        redis_url: str,
        registry: Registry,
        node_id: str,
        *,
        settings: Settings | None = None,
        store: Any = None,
    ) -> None:
        s = settings or Settings()
        self.url = redis_url
        self.registry = registry
        self.node_id = node_id
        self.store = store
        self.heartbeat_s = s.redis_heartbeat_s
        self.node_ttl_s = s.redis_node_ttl_s
        self.cluster = s.redis_cluster
        self.on_message: MessageHook | None = None
        self.redis: Any = None
        self.redis_ps: Any = None
        self.sequencer = Sequencer(
            self._fill,
            self._emit,
            self._resync_user,
            hold_s=s.order_hold_s,
            lookback_s=s.order_lookback_s,
        )
        # remote typists, kept alive by renewals; a lapse means their node died
        self.relay = MemoryPresence(
            s.typing_ttl_s * 2 + self.heartbeat_s, self._relay_lapsed
        )
        self.live: set[str] = set()
        self.dead: set[str] = set()
        self._local: dict[int, int] = {}
        self._gens: dict[int, int] = {}
        self._attached_at: dict[int, float] = {}
        self._registering: dict[int, asyncio.Future[None]] = {}
        self._gen = itertools.count(int(time.time() * 1000))
        self._outbox: deque[_Out] = deque()
        self._pub_wakeup = asyncio.Event()
        self._unregister: deque[tuple[int, int]] = deque()
        self._chat_subs: set[int] = set()
        self._missed: set[int] = set()
        self._missed_all = False
        self._up = False
        self._lost_at: float | None = None
        self._lost_epoch = 0
        self._last_ok = time.monotonic()
        self._ps: Any = None
        self._ps_epoch = 0
        self._ps_recycle = False
        self._seen_in_redis = False
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._hb_script: Any = None
        self.restores = 0
        self.catch_ups = 0

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self.redis = make_client(self.url, self.cluster)
        self.redis_ps = make_client(self.url, self.cluster, retries=0)
        self._hb_script = self.redis.register_script(_HEARTBEAT_LUA)
        await self.relay.start()
        try:
            await self._heartbeat_once()
            self._up = True
            metrics.BUS_UP.set(1)
        except _REDIS_ERRORS as exc:
            log.warning(
                "bus.redis_unreachable node=%s err=%s", self.node_id, type(exc).__name__
            )
            self._link_down()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._listen()),
            loop.create_task(self._publish_loop()),
            loop.create_task(self._heartbeat_loop()),
        ]
        deadline = time.monotonic() + 2.0
        while self._up and self._ps_epoch == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._stopping = True
        deadline = time.monotonic() + 2.0
        while (
            (self._outbox or self._unregister)
            and self._up
            and time.monotonic() < deadline
        ):
            self._pub_wakeup.set()
            await asyncio.sleep(0.01)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.sequencer.stop()
        await self.relay.stop()
        if self._up:
            with contextlib.suppress(*_REDIS_ERRORS):
                await asyncio.wait_for(self._deregister_node(), timeout=3.0)
        for client in (self.redis, self.redis_ps):
            with contextlib.suppress(Exception):
                await client.aclose()
        metrics.BUS_UP.set(0)

    async def _deregister_node(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for uid, gen in list(self._gens.items()) + list(self._unregister):
            pipe.eval(_UNREGISTER_LUA, 1, key_user(uid), self.node_id, gen)
        pipe.delete(key_node_users(self.node_id))
        pipe.zrem(KEY_NODES, self.node_id)
        await pipe.execute()
        log.info("bus.deregistered node=%s users=%d", self.node_id, len(self._gens))

    async def ready(self) -> bool:
        return self._up

    # -- users on this node --------------------------------------------------------

    async def attach(self, user_id: int) -> None:
        """A socket of this user is about to open here: once this returns, events
        committed from now on are routed to this node."""
        n = self._local.get(user_id, 0)
        self._local[user_id] = n + 1
        self._attached_at[user_id] = time.monotonic()
        self.sequencer.user_arrived(user_id)
        if n > 0:
            pending = self._registering.get(user_id)
            if pending is not None:
                await asyncio.shield(pending)
            return
        gen = next(self._gen)
        self._gens[user_id] = gen
        if not self._up:
            return  # registered by the restore once Redis is back
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._registering[user_id] = fut
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key_user(user_id), self.node_id, gen)
            pipe.sadd(key_node_users(self.node_id), user_id)
            await asyncio.wait_for(pipe.execute(), REGISTER_TIMEOUT_S)
        except _REDIS_ERRORS as exc:
            log.warning(
                "bus.register_failed node=%s err=%s", self.node_id, type(exc).__name__
            )
            self._link_down()
        finally:
            self._registering.pop(user_id, None)
            fut.set_result(None)

    def detach(self, user_id: int) -> None:
        """A socket of this user closed (or its handshake failed)."""
        n = self._local.get(user_id, 0) - 1
        if n > 0:
            self._local[user_id] = n
            return
        self._local.pop(user_id, None)
        self._attached_at.pop(user_id, None)
        gen = self._gens.pop(user_id, None)
        self.sequencer.forget_user(user_id)
        if gen is not None:
            self._unregister.append((user_id, gen))
            self._pub_wakeup.set()

    # -- publishing ------------------------------------------------------------------

    def publish_users(
        self,
        user_ids: Iterable[int],
        frame: bytes,
        exclude: str | None = None,
        kind: str = "event",
        order: tuple[int, int, int | None] | None = None,
    ) -> list[int]:
        users = list(user_ids)
        if order is None:
            reached = self.registry.deliver_users(users, frame, exclude, kind)
            self._enqueue(_Out(_EV_USERS, users, frame, exclude, kind))
            return reached
        chat_id, seq, author = order
        local = self._local
        for uid in users:
            if uid in local:
                self.sequencer.offer(uid, chat_id, seq, frame, exclude, author)
        self._enqueue(
            _Out(_EV_MESSAGE, users, frame, exclude, kind, chat_id, seq, author)
        )
        return []  # receipts are noted through on_message as events go out

    def publish_chat(
        self,
        chat_id: int,
        frame: bytes,
        exclude: str | None = None,
        typing: tuple[int, bool] | None = None,
        renew: bool = False,
    ) -> None:
        if not renew:
            self.registry.deliver_chat(chat_id, frame, exclude)
        user, flag = typing if typing is not None else (0, False)
        self._enqueue(
            _Out(
                _EV_CHAT,
                [],
                frame,
                exclude,
                "typing",
                chat_id,
                typing_user=user,
                typing=flag,
                renew=renew,
            )
        )

    def _enqueue(self, item: _Out) -> None:
        if not self._up:
            self._note_missed(item)
            return
        if len(self._outbox) >= OUTBOX_MAX:
            metrics.BUS_ERRORS.labels(kind="outbox_full").inc()
            self._note_missed(item)
            return
        self._outbox.append(item)
        self._pub_wakeup.set()

    def _note_missed(self, item: _Out) -> None:
        if item.kind == _EV_CHAT:
            return  # typing is ephemeral; relays lapse by themselves
        if len(self._missed) + len(item.users) > MISSED_MAX:
            self._missed_all = True
            self._missed.clear()
        elif not self._missed_all:
            self._missed.update(item.users)

    async def _publish_loop(self) -> None:
        while True:
            await self._pub_wakeup.wait()
            self._pub_wakeup.clear()
            while self._unregister and self._up:
                await self._flush_unregister()
            while self._outbox:
                batch = [
                    self._outbox.popleft()
                    for _ in range(min(PUBLISH_BATCH, len(self._outbox)))
                ]
                if not self._up:
                    for item in batch:
                        self._note_missed(item)
                    continue
                try:
                    await self._publish_batch(batch)
                except _REDIS_ERRORS as exc:
                    log.warning(
                        "bus.publish_failed node=%s err=%s",
                        self.node_id,
                        type(exc).__name__,
                    )
                    metrics.BUS_ERRORS.labels(kind="publish").inc()
                    for item in batch:
                        self._note_missed(item)
                    self._link_down()

    async def _flush_unregister(self) -> None:
        items = [
            self._unregister.popleft() for _ in range(min(512, len(self._unregister)))
        ]
        pipe = self.redis.pipeline(transaction=False)
        for uid, gen in items:
            pipe.eval(_UNREGISTER_LUA, 1, key_user(uid), self.node_id, gen)
            pipe.srem(key_node_users(self.node_id), uid)
        try:
            await pipe.execute()
        except _REDIS_ERRORS:
            self._link_down()  # the restore rewrites what is ours; the rest lapses

    async def _publish_batch(self, batch: list[_Out]) -> None:
        started = time.perf_counter()
        users = sorted({u for item in batch for u in item.users})
        nodes_of: dict[int, list[str]] = {}
        if users:
            pipe = self.redis.pipeline(transaction=False)
            for uid in users:
                pipe.hkeys(key_user(uid))
            for uid, keys in zip(users, await pipe.execute(), strict=False):
                nodes_of[uid] = [k.decode() for k in keys]

        me, dead = self.node_id, self.dead
        per_node: dict[str, list[list[Any]]] = {}
        per_chat: dict[int, list[list[Any]]] = {}
        for item in batch:
            if item.kind == _EV_CHAT:
                per_chat.setdefault(item.chat_id, []).append(
                    [
                        _EV_CHAT,
                        item.chat_id,
                        item.typing_user,
                        item.typing,
                        item.renew,
                        me,
                        item.exclude,
                        item.frame,
                    ]
                )
                continue
            targets: dict[str, list[int]] = {}
            for uid in item.users:
                for node in nodes_of.get(uid, ()):
                    if node != me and node not in dead:
                        targets.setdefault(node, []).append(uid)
            for node, uids in targets.items():
                if item.kind == _EV_MESSAGE:
                    env = [
                        _EV_MESSAGE,
                        item.chat_id,
                        item.seq,
                        item.author,
                        item.exclude,
                        uids,
                        item.frame,
                    ]
                else:
                    env = [_EV_USERS, item.label, item.exclude, uids, item.frame]
                per_node.setdefault(node, []).append(env)

        if per_node or per_chat:
            pipe = self.redis.pipeline(transaction=False)
            for node, envs in per_node.items():
                pipe.spublish(channel_node(node), _encode(envs))
            for chat_id, envs in per_chat.items():
                pipe.spublish(channel_chat(chat_id), _encode(envs))
            await pipe.execute()
            metrics.BUS_MESSAGES.labels(kind="out").inc(len(per_node) + len(per_chat))
        metrics.BUS_PUBLISH_SECONDS.observe(time.perf_counter() - started)

    # -- receiving --------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = 0.05
        while not self._stopping:
            ps: Any = None
            try:
                # a cluster client learns the slot map here, before routing channels
                await self.redis_ps.initialize()
                ps = self.redis_ps.pubsub(ignore_subscribe_messages=True)
                # the cluster client keeps one subscriber per shard behind this reader
                sharded = hasattr(ps, "get_sharded_message")
                chats = set(self.registry.by_chat)
                await ps.ssubscribe(
                    channel_node(self.node_id), *(channel_chat(c) for c in chats)
                )
                self._chat_subs = chats
                self._ps = ps
                self._ps_epoch += 1
                self._ps_recycle = False
                backoff = 0.05
                while not self._ps_recycle:
                    read = ps.get_sharded_message if sharded else ps.get_message
                    msg = await read(ignore_subscribe_messages=True, timeout=0.5)
                    if msg is not None and msg.get("type") == "smessage":
                        self._on_envelopes(msg["data"])
            except asyncio.CancelledError:
                raise
            except _REDIS_ERRORS as exc:
                if not self._stopping:
                    log.warning(
                        "bus.subscription_lost node=%s err=%s",
                        self.node_id,
                        type(exc).__name__,
                    )
                    self._link_down()
            except Exception:
                log.exception("bus.listen_failed node=%s", self.node_id)
                self._link_down()
            finally:
                self._ps = None
                if ps is not None:
                    with contextlib.suppress(Exception):
                        await ps.aclose()
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    def _on_envelopes(self, data: bytes) -> None:
        metrics.BUS_MESSAGES.labels(kind="in").inc()
        try:
            envs = _decode(data)
        except msgspec.DecodeError:
            metrics.BUS_ERRORS.labels(kind="decode").inc()
            return
        local = self._local
        for env in envs:
            kind = env[0]
            if kind == _EV_MESSAGE:
                _, chat_id, seq, author, exclude, users, frame = env
                for uid in users:
                    if uid in local:
                        self.sequencer.offer(uid, chat_id, seq, frame, exclude, author)
            elif kind == _EV_USERS:
                _, label, exclude, users, frame = env
                self.registry.deliver_users(users, frame, exclude, label)
            elif kind == _EV_CHAT:
                _, chat_id, user, flag, renew, origin, exclude, frame = env
                if origin != self.node_id:
                    self._on_remote_typing(chat_id, user, flag, renew, exclude, frame)
            elif kind == _EV_RESYNC:
                _, users, window_s = env
                self._spawn(self._catch_up(users, float(window_s)))

    def _on_remote_typing(
        self,
        chat_id: int,
        user: int,
        flag: bool,
        renew: bool,
        exclude: str | None,
        frame: bytes,
    ) -> None:
        if not user:
            self.registry.deliver_chat(chat_id, frame, exclude)
        elif flag:
            if self.relay.start_typing(chat_id, user) or not renew:
                self.registry.deliver_chat(chat_id, frame, exclude)
        else:
            self.relay.stop_typing(chat_id, user)
            self.registry.deliver_chat(chat_id, frame, exclude)

    def _relay_lapsed(self, chat_id: int, user_id: int) -> None:
        frame = m.event_frame(
            "chat.user.typing",
            m.TypingOut(chat_id=chat_id, user_id=user_id, typing=False),
        )
        self.registry.deliver_chat(chat_id, frame, None)

    def typing(self, chat_id: int) -> list[int]:
        return self.relay.typing(chat_id)

    async def watch_chat(self, chat_id: int) -> None:
        """A local socket subscribed to the chat: hear its typing from other nodes."""
        if chat_id in self._chat_subs:
            return
        self._chat_subs.add(chat_id)
        ps = self._ps
        if ps is not None:
            try:
                await ps.ssubscribe(channel_chat(chat_id))
            except _REDIS_ERRORS:
                self._link_down()

    async def _sync_chat_subs(self) -> None:
        ps = self._ps
        if ps is None:
            return
        wanted = set(self.registry.by_chat)
        gone = self._chat_subs - wanted
        new = wanted - self._chat_subs
        if gone:
            self._chat_subs -= gone
            await ps.sunsubscribe(*(channel_chat(c) for c in gone))
        if new:
            self._chat_subs |= new
            await ps.ssubscribe(*(channel_chat(c) for c in new))

    # -- ordering callbacks ------------------------------------------------------------

    async def _fill(
        self, chat_id: int, after_seq: int | None, before_seq: int, lookback_s: float
    ) -> list[tuple[int, int | None, bytes]]:
        return await fill.messages_before(
            self.store, chat_id, after_seq, before_seq, lookback_s
        )

    def _emit(self, user_id: int, chat_id: int, seq: int, held: Held) -> None:
        reached = self.registry.deliver_users(
            (user_id,), held.frame, held.exclude, "message"
        )
        if reached and self.on_message is not None:
            self.on_message(chat_id, seq, held.author, reached)

    def _resync_user(self, user_id: int) -> None:
        for s in tuple(self.registry.sessions_of(user_id)):
            metrics.BUS_RESYNC_CLOSES.inc()
            s.close(CloseCode.SERVICE_RESTART, "missed events, resync")

    # -- presence ------------------------------------------------------------------------

    async def online(self, user_ids: Iterable[int]) -> list[int]:
        users = list(user_ids)
        online = set(self.registry.online(users))
        rest = [u for u in users if u not in online]
        if rest and self._up:
            try:
                pipe = self.redis.pipeline(transaction=False)
                for uid in rest:
                    pipe.hkeys(key_user(uid))
                dead = self.dead
                for uid, keys in zip(rest, await pipe.execute(), strict=False):
                    if any(k.decode() not in dead for k in keys):
                        online.add(uid)
            except _REDIS_ERRORS:
                self._link_down()
        return [u for u in users if u in online]

    # -- health, heartbeat and recovery -------------------------------------------------

    def _link_down(self) -> None:
        if self._lost_at is None:
            self._lost_at = self._last_ok
            self._lost_epoch = self._ps_epoch
            log.warning("bus.redis_lost node=%s", self.node_id)
        self._up = False
        metrics.BUS_UP.set(0)

    async def _heartbeat_once(self) -> None:
        ttl_ms = int(self.node_ttl_s * 1000)
        added, live, expired = await asyncio.wait_for(
            self._hb_script(keys=[KEY_NODES], args=[self.node_id, ttl_ms]),
            timeout=max(1.0, self.heartbeat_s),
        )
        self._last_ok = time.monotonic()
        live_set = {n.decode() for n in live}
        # Only an expired heartbeat makes a node dead: one missing from the set may
        # just not have heartbeated since a Redis restart.
        self.dead |= {n.decode() for n in expired}
        self.dead -= live_set
        self.live = live_set
        if added and self._seen_in_redis and self._lost_at is None:
            # Redis forgot this node (restart, or we were declared dead): our
            # registrations are gone and events may have been routed nowhere.
            self._lost_at = self._last_ok - self.heartbeat_s
            self._lost_epoch = self._ps_epoch
            log.warning("bus.redis_state_lost node=%s", self.node_id)
        self._seen_in_redis = True
        for node in expired:
            self._spawn(self._clean_node(node.decode()))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except _REDIS_ERRORS as exc:
                if not self._stopping:
                    log.debug(
                        "bus.heartbeat_failed node=%s err=%s",
                        self.node_id,
                        type(exc).__name__,
                    )
                    self._link_down()
            except Exception:
                log.exception("bus.heartbeat_crashed node=%s", self.node_id)
                self._link_down()

    async def _tick(self) -> None:
        await self._heartbeat_once()
        if self._lost_at is not None:
            if self._ps_epoch <= self._lost_epoch:
                self._ps_recycle = True  # resubscribe on a fresh connection first
                return
            await self._restore()
        else:
            self._up = True
            metrics.BUS_UP.set(1)
            await self._sync_chat_subs()
        self._sweep_leaked_attaches()
        if self._unregister:
            self._pub_wakeup.set()

    async def _restore(self) -> None:
        """Redis is back: register every local user again, tell other nodes whom our
        failed publishes were for, and have local sockets that may have missed
        events resync (closed with 1012)."""
        assert self._lost_at is not None
        window_s = time.monotonic() - self._lost_at + RESTORE_MARGIN_S
        self._up = True
        try:
            items = list(self._gens.items())
            for i in range(0, len(items), 1000):
                pipe = self.redis.pipeline(transaction=False)
                for uid, gen in items[i : i + 1000]:
                    pipe.hset(key_user(uid), self.node_id, gen)
                    pipe.sadd(key_node_users(self.node_id), uid)
                await pipe.execute()
            self._unregister.clear()
            missed: list[int] | None = (
                None if self._missed_all else sorted(self._missed)
            )
            if missed is None or missed:
                notice = _encode([[_EV_RESYNC, missed, window_s]])
                pipe = self.redis.pipeline(transaction=False)
                for node in self.live - {self.node_id}:
                    pipe.spublish(channel_node(node), notice)
                await pipe.execute()
            await self._sync_chat_subs()
        except _REDIS_ERRORS:
            self._up = False
            return
        self._missed.clear()
        self._missed_all = False
        self._lost_at = None
        metrics.BUS_UP.set(1)
        log.warning(
            "bus.redis_restored node=%s window_s=%.1f users=%d",
            self.node_id,
            window_s,
            len(items),
        )
        await self._catch_up(None, window_s)
        self.restores += 1

    async def _catch_up(self, users: list[int] | None, window_s: float) -> None:
        """Closes (1012) local sockets of users who may have missed events: those
        named, or, when None, those in a chat that changed within the window."""
        if users is None:
            local = list(self._local)
            if not local:
                self.catch_ups += 1
                return
            try:
                users = await fill.users_with_changes(self.store, local, window_s)
            except Exception as exc:
                log.warning(
                    "bus.catch_up_failed node=%s err=%s",
                    self.node_id,
                    type(exc).__name__,
                )
                users = local  # cannot tell: everyone resyncs
        n = 0
        for uid in users:
            for s in tuple(self.registry.sessions_of(uid)):
                metrics.BUS_RESYNC_CLOSES.inc()
                s.close(CloseCode.SERVICE_RESTART, "missed events, resync")
                n += 1
        self.catch_ups += 1
        if n:
            log.info("bus.resync_closed node=%s sockets=%d", self.node_id, n)

    async def _clean_node(self, node: str) -> None:
        """Remove a dead node's registrations (we claimed it in the heartbeat)."""
        key = key_node_users(node)
        try:
            cursor = 0
            while True:
                cursor, uids = await self.redis.sscan(key, cursor, count=500)
                if uids:
                    pipe = self.redis.pipeline(transaction=False)
                    for uid in uids:
                        pipe.hdel(key_user(int(uid)), node)
                    await pipe.execute()
                if cursor == 0:
                    break
            await self.redis.delete(key)
            log.info("bus.node_cleaned node=%s dead=%s", self.node_id, node)
        except _REDIS_ERRORS as exc:
            log.warning(
                "bus.node_clean_failed dead=%s err=%s", node, type(exc).__name__
            )

    def _sweep_leaked_attaches(self) -> None:
        """An attach whose handshake never completed leaves a count with no socket."""
        now = time.monotonic()
        for uid, at in list(self._attached_at.items()):
            if now - at > LEAKED_ATTACH_S and not self.registry.connections_of(uid):
                self._local[uid] = 1
                self.detach(uid)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
