"""The WebSocket shell: handshake auth, the read loop, dispatch, replies and fan-out.

Frames are decoded and validated by `protocol.codec`; sends go to the batch writer
and are acknowledged after commit; everything else runs as a short task against the
store. Events go out through the bus, which reaches sockets on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import inspect
import logging
import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response

from . import lang, metrics
from .auth import Identity, TokenVerifier
from .bus.base import Bus
from .config import Settings
from .errors import BesedaError, CloseCode, Internal, NotFound, RateLimited, Unauthorized
from .keepalive import Keepalive
from .limits import (
    ConnectionLimiter,
    TrackedConnection,
    close_origin,
    count_close,
    peer_ip,
)
from .logs import field
from .presence import MemoryPresence
from .protocol import messages as m
from .protocol.codec import Limits, decode_request, peek_id
from .receipts import DeliveryTracker
from .registry import Registry
from .session import HEAVY_IN_FLIGHT, Session
from .store import SendResult, SendRow, Store
from .writer import BatchWriter, PendingSend

log = logging.getLogger(__name__)

MEMBERSHIP_TTL_S = 30.0
HEAVY_KINDS = frozenset({"messages.history", "chats.sync"})
CLOSE_WAIT_S = 10.0  # past websockets' close_timeout (5 s)


def bearer_token(request: Request) -> str | None:
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    query = urlsplit(request.path).query
    if query:
        values = parse_qs(query).get("token")
        if values:
            return values[0]
    return None


def _json_response(status: http.HTTPStatus, code: str, message: str) -> Response:
    body = m.encode({"error": {"code": code, "message": message}})
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


class ChatServer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        writer: BatchWriter,
        bus: Bus,
        registry: Registry,
        verifier: TokenVerifier,
        node_id: str,
    ) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.bus = bus
        self.registry = registry
        self.verifier = verifier
        self.node_id = node_id
        self.limits = Limits(settings.max_text_bytes, settings.max_metadata_bytes)
        self.presence = MemoryPresence(settings.typing_ttl_s, self._typing_lapsed)
        self.receipts = DeliveryTracker(store, bus)
        self.keepalive = Keepalive(settings.ping_interval_s, settings.ping_timeout_s)
        bus.on_message = self.receipts.note
        self.limiter = ConnectionLimiter(settings.max_connections_per_ip)
        self._server: WsServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.accepting = True
        self.port = 0
        self._handlers = {
            "message.send": self._on_send,
            "message.edit": self._on_edit,
            "message.delete": self._on_delete,
            "message.read": self._on_read,
            "messages.history": self._on_history,
            "chats.sync": self._on_sync,
            "chat.subscribe": self._on_subscribe,
            "chat.unsubscribe": self._on_unsubscribe,
            "typing.start": self._on_typing_start,
            "typing.stop": self._on_typing_stop,
            "auth.refresh": self._on_refresh,
        }

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        extensions = None
        if s.compression:
            extensions = [
                ServerPerMessageDeflateFactory(
                    server_max_window_bits=11,
                    client_max_window_bits=11,
                    compress_settings={"memLevel": 4},
                )
            ]
        await self.presence.start()
        await self.receipts.start()
        self.keepalive.start()
        self._server = await serve(
            self._handle,
            s.host,
            s.ws_port,
            process_request=self._process_request,
            compression=None,
            extensions=extensions,
            max_size=s.max_frame_bytes,
            max_queue=16,
            # The transport counts as paused past half the send queue: large reads
            # then wait for the peer to take what it was sent (ChatServer._gated).
            write_limit=s.send_queue_bytes // 2,
            # Keepalive runs node-wide (wsserver/keepalive.py), not as a task per socket.
            ping_interval=None,
            ping_timeout=None,
            close_timeout=5,
            open_timeout=s.handshake_timeout_s,
            server_header=None,
            reuse_port=False,
            create_connection=TrackedConnection,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]

    async def drain(self, timeout: float) -> None:
        """Stop accepting, finish in-flight sends, close every socket with 1012."""
        self.accepting = False
        if self._server is not None:
            self._server.close(close_connections=False)
        await self.writer.stop(timeout=timeout)
        sessions = [s for lst in self.registry.by_user.values() for s in lst]
        for s in sessions:
            s.close(CloseCode.SERVICE_RESTART)
        deadline = time.monotonic() + max(1.0, timeout / 2)
        while self.registry.count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._server is not None:
            self._server.close(close_connections=True)
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            except asyncio.TimeoutError:
                log.error("server.drain_incomplete open=%d", self.registry.count)
        await self.keepalive.stop()
        await self.receipts.stop()
        await self.presence.stop()

    # -- handshake ---------------------------------------------------------------

    async def _process_request(
        self, conn: ServerConnection, request: Request
    ) -> Response | None:
        path = urlsplit(request.path).path
        if path != "/ws":
            return _json_response(http.HTTPStatus.NOT_FOUND, "not_found", "no such endpoint")
        if not self.accepting:
            return _json_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", "node is draining"
            )
        ip = peer_ip(conn)
        if self.limiter.ip_full(ip):
            return self._refuse_limited(
                conn, "connections_ip", "too many connections from this address"
            )
        token = bearer_token(request)
        try:
            if token is None:
                raise Unauthorized("missing token")
            identity = self.verifier.verify(token)
        except Unauthorized as exc:
            metrics.REJECTIONS.labels(reason="auth").inc()
            log.info(
                "conn.refused hs=%s reason=%s", conn.id.hex[:12], field(exc.message)
            )
            return _json_response(http.HTTPStatus.UNAUTHORIZED, "unauthorized", exc.message)
        if self.registry.connections_of(identity.user_id) >= self.settings.max_connections_per_user:
            return self._refuse_limited(conn, "connections_user", "too many connections")
        # Routed to this node before the 101: anything committed after it reaches us.
        await self.bus.attach(identity.user_id)
        if not self.accepting:
            self.bus.detach(identity.user_id)
            return _json_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", "node is draining"
            )
        conn.identity = identity  # type: ignore[attr-defined]
        conn.peer_ip = ip  # type: ignore[attr-defined]
        return None

    def _refuse_limited(self, conn: ServerConnection, reason: str, message: str) -> Response:
        """A connection limit answers HTTP 429 with a JSON error, before any upgrade."""
        metrics.REJECTIONS.labels(reason=reason).inc()
        log.info("conn.refused hs=%s reason=%s", conn.id.hex[:12], reason)
        return _json_response(http.HTTPStatus.TOO_MANY_REQUESTS, "rate_limited", message)

    # -- connection --------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        identity: Identity = ws.identity  # type: ignore[attr-defined]
        s = self.settings
        session = Session(ws, identity, self.node_id, s.send_queue_bytes, s.rate_per_s, s.rate_burst)
        ip: str = ws.peer_ip  # type: ignore[attr-defined]
        self.registry.add(session)
        self.keepalive.add(session)
        self.limiter.opened(ip)
        self._schedule_expiry(session)
        metrics.CONNECTIONS_OPEN.inc()
        log.info("conn.open conn=%s user=%s role=%s", session.conn_id, identity.user_id, identity.role)
        debug = log.isEnabledFor(logging.DEBUG)
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    session.close(CloseCode.UNSUPPORTED_DATA)
                    break
                if debug:
                    log.debug("conn.frame conn=%s bytes=%d", session.conn_id, len(frame))
                self._dispatch(session, frame)
                if session.closing:
                    break
        except ConnectionClosed:
            pass
        finally:
            if session.close_task is not None:
                # Our close code must win over the 1000 that websockets sends when
                # the handler returns.
                with contextlib.suppress(Exception):
                    await session.close_task
            self.limiter.closed(ip)
            self._disconnected(session)
            # Count and log once the closing handshake is over, without holding the
            # handler: when it returns, websockets closes the socket (1000, or 1011
            # after an unexpected error) if nobody has yet.
            task = asyncio.get_running_loop().create_task(self._closed(session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _disconnected(self, session: Session) -> None:
        session.closing = True
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
        self.registry.remove(session)
        self.keepalive.remove(session)
        self.bus.detach(session.user_id)
        metrics.CONNECTIONS_OPEN.dec()
        for chat_id in list(session.typing):
            if self.presence.stop_typing(chat_id, session.user_id):
                self._publish_typing(chat_id, session.user_id, False, None)

    async def _closed(self, session: Session) -> None:
        """Counts and logs the close once the closing handshake is over (bounded by
        close_timeout), so a close the server started is counted with its own code."""
        ws = session.ws
        try:
            await asyncio.wait_for(ws.wait_closed(), CLOSE_WAIT_S)
        except asyncio.TimeoutError:
            pass
        code = count_close(ws)
        by, reason = close_origin(ws)
        log.info(
            "conn.closed conn=%s user=%s code=%s by=%s reason=%s dur_s=%.1f",
            session.conn_id, session.user_id, code, by, field(reason),
            time.monotonic() - session.opened_at,
        )

    def _schedule_expiry(self, session: Session) -> None:
        if session.expiry_timer is not None:
            session.expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        delay = session.identity.exp + self.settings.jwt_leeway_s - time.time()
        session.expiry_timer = loop.call_later(max(0.0, delay), self._expire, session)

    def _expire(self, session: Session) -> None:
        if time.time() >= session.identity.exp + self.settings.jwt_leeway_s:
            log.info("conn.token_expired conn=%s user=%s", session.conn_id, session.user_id)
            session.close(CloseCode.TOKEN_EXPIRED)
        else:
            self._schedule_expiry(session)

    # -- dispatch ----------------------------------------------------------------

    def _dispatch(self, session: Session, frame: str) -> None:
        if time.time() >= session.identity.exp + self.settings.jwt_leeway_s:
            session.close(CloseCode.TOKEN_EXPIRED)
            return
        try:
            kind, req_id, payload = decode_request(frame, self.limits)
        except BesedaError as exc:
            metrics.count_request("invalid", exc.code)
            metrics.REJECTIONS.labels(reason="size" if exc.code == "too_large" else "invalid").inc()
            session.bad_frames += 1
            session.push(m.error_frame(peek_id(frame), exc.to_wire()), "error")
            if session.bad_frames > self.settings.bad_frames_before_close:
                session.close(CloseCode.POLICY)
            return
        wait = session.bucket.take()
        if wait > 0.0:
            session.violations += 1
            metrics.REJECTIONS.labels(reason="rate").inc()
            metrics.count_request(kind, "rate_limited")
            if session.violations > self.settings.rate_violations_before_close:
                session.close(CloseCode.RATE)
                return
            self._reply_error(session, req_id, RateLimited(int(wait * 1000) + 1))
            return
        if session.pending >= self.settings.max_pending_requests:
            metrics.REJECTIONS.labels(reason="pending").inc()
            metrics.count_request(kind, "rate_limited")
            self._reply_error(
                session, req_id, RateLimited(100, "too many requests in flight")
            )
            return
        self._handlers[kind](session, req_id, payload)

    def _reply(self, session: Session, req_id: str | None, kind: str, data: Any) -> None:
        metrics.count_request(kind, "ok")
        if req_id is not None:
            session.push(m.ack_frame(req_id, data), "ack")

    def _reply_error(self, session: Session, req_id: str | None, exc: BesedaError) -> None:
        session.push(m.error_frame(req_id, exc.to_wire()), "error")

    def _spawn(
        self, session: Session, req_id: str | None, kind: str, work: Awaitable[Any]
    ) -> None:
        if kind in HEAVY_KINDS:
            work = self._gated(session, work)
        session.pending += 1
        task = asyncio.get_running_loop().create_task(
            self._run(session, req_id, kind, work)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _gated(session: Session, work: Awaitable[Any]) -> Any:
        """Large reads (history, sync pages) run a few at a time per socket, each
        only once the socket has taken most of what it was already sent, so a
        client pipelining many of them is paced instead of shed."""
        if session.heavy is None:
            session.heavy = asyncio.Semaphore(HEAVY_IN_FLIGHT)
        try:
            async with session.heavy:
                ws = session.ws
                if ws.paused and not session.closing:
                    await ws.drain()
                return await work
        finally:
            if inspect.iscoroutine(work) and inspect.getcoroutinestate(work) == "CORO_CREATED":
                work.close()

    async def _run(
        self, session: Session, req_id: str | None, kind: str, work: Awaitable[Any]
    ) -> None:
        try:
            data = await work
        except BesedaError as exc:
            metrics.count_request(kind, exc.code)
            self._reply_error(session, req_id, exc)
        except Exception:
            log.exception("request.failed type=%s conn=%s", kind, session.conn_id)
            metrics.count_request(kind, "internal")
            self._reply_error(session, req_id, Internal())
        else:
            self._reply(session, req_id, kind, data)
        finally:
            session.pending -= 1

    # -- message.send --------------------------------------------------------------

    def _on_send(self, session: Session, req_id: str | None, p: m.MessageSend) -> None:
        metadata = None if p.metadata is None else m.encode(p.metadata).decode()
        row = SendRow(
            chat_id=p.chat_id,
            user_id=session.user_id,
            message_key=p.message_key,
            type=p.type,
            text=p.text,
            lang=lang.detect(p.text),
            metadata=metadata,
            reply_to_id=p.reply_to_id,
            attachments=list(p.attachments),
        )
        session.pending += 1
        self.writer.submit(row, self._sent, (session, req_id))

    def _sent(self, item: PendingSend, result: SendResult, committed: float) -> None:
        session, req_id = item.context
        session.pending -= 1
        if result.error is not None:
            metrics.count_request("message.send", result.error.code)
            self._reply_error(session, req_id, result.error)
            return
        msg = result.message
        assert msg is not None
        ack, frame = m.message_frames(msg, req_id, result.duplicate)
        metrics.count_request("message.send", "ok")
        session.push(ack, "ack")
        metrics.SEND_TO_ACK.observe(time.perf_counter() - item.received_at)
        if result.duplicate:
            return
        reached = self.bus.publish_users(
            result.members, frame, session.conn_id, "message", (msg.chat_id, msg.seq, msg.user_id)
        )
        metrics.COMMIT_TO_DELIVERY.observe(time.perf_counter() - committed)
        self.receipts.note(msg.chat_id, msg.seq, msg.user_id, reached)

    def deliver_message(self, msg: m.MessageOut, members: list[int], exclude: str | None = None) -> None:
        """Fan-out of a message stored outside the socket path (internal API)."""
        frame = m.event_frame("chat.message.new", msg)
        reached = self.bus.publish_users(
            members, frame, exclude, "message", (msg.chat_id, msg.seq, msg.user_id)
        )
        self.receipts.note(msg.chat_id, msg.seq, msg.user_id, reached)

    # -- other requests ------------------------------------------------------------

    def _on_edit(self, session: Session, req_id: str | None, p: m.MessageEdit) -> None:
        async def work() -> m.MessageOut:
            msg, members = await self.store.edit(
                session.user_id, p.message_id, p.text, lang.detect(p.text)
            )
            self.bus.publish_users(members, m.event_frame("chat.message.update", msg), session.conn_id)
            return msg

        self._spawn(session, req_id, "message.edit", work())

    def _on_delete(self, session: Session, req_id: str | None, p: m.MessageDelete) -> None:
        async def work() -> m.DeleteOut:
            out, members, changed = await self.store.delete(
                session.user_id, session.identity.role, p.message_id
            )
            if changed:
                self.bus.publish_users(
                    members, m.event_frame("chat.message.delete", out), session.conn_id
                )
            return out

        self._spawn(session, req_id, "message.delete", work())

    def _on_read(self, session: Session, req_id: str | None, p: m.MessageRead) -> None:
        async def work() -> m.ReadAck:
            ack, members, moved = await self.store.read(session.user_id, p.chat_id, p.message_id)
            if moved:
                status = m.StatusOut(
                    chat_id=p.chat_id, user_id=session.user_id, status="read",
                    message_id=ack.last_read_message_id,
                )
                self.bus.publish_users(
                    members, m.event_frame("chat.message.status", status), session.conn_id
                )
            return ack

        self._spawn(session, req_id, "message.read", work())

    def _on_history(self, session: Session, req_id: str | None, p: m.MessagesHistory) -> None:
        self._spawn(
            session, req_id, "messages.history",
            self.store.history(session.user_id, p.chat_id, p.before_seq, p.after_seq, p.limit),
        )

    def _on_sync(self, session: Session, req_id: str | None, p: m.ChatsSync) -> None:
        self._spawn(session, req_id, "chats.sync", self.store.sync(session.user_id, p.chats))

    async def _check_member(self, session: Session, chat_id: int) -> None:
        until = session.member_until.get(chat_id)
        now = time.monotonic()
        if until is not None and until > now:
            return
        if not await self.store.is_member(chat_id, session.user_id):
            session.member_until.pop(chat_id, None)
            raise NotFound("chat not found")
        if len(session.member_until) > 256:
            session.member_until.clear()
        session.member_until[chat_id] = now + MEMBERSHIP_TTL_S

    def forget_membership(self, user_id: int, chat_id: int) -> None:
        """Called when a user leaves a chat: drop cached rights and subscriptions."""
        for s in self.registry.sessions_of(user_id):
            s.member_until.pop(chat_id, None)
            self.registry.unsubscribe(s, chat_id)
            if s.stop_typing(chat_id):
                if self.presence.stop_typing(chat_id, user_id):
                    self._publish_typing(chat_id, user_id, False, None)

    def _on_subscribe(self, session: Session, req_id: str | None, p: m.ChatRef) -> None:
        async def work() -> m.SubscribeAck:
            await self._check_member(session, p.chat_id)
            if session.closing:
                return m.SubscribeAck(typing=[], online=[])
            self.registry.subscribe(session, p.chat_id)
            await self.bus.watch_chat(p.chat_id)
            members = await self.store.members(p.chat_id)
            online = await self.bus.online(members)
            typists = set(self.presence.typing(p.chat_id)) | set(self.bus.typing(p.chat_id))
            typing = sorted(u for u in typists if u != session.user_id)
            return m.SubscribeAck(typing=typing, online=online)

        self._spawn(session, req_id, "chat.subscribe", work())

    def _on_unsubscribe(self, session: Session, req_id: str | None, p: m.ChatRef) -> None:
        async def work() -> dict[str, Any]:
            await self._check_member(session, p.chat_id)
            self.registry.unsubscribe(session, p.chat_id)
            return {}

        self._spawn(session, req_id, "chat.unsubscribe", work())

    def _on_typing_start(self, session: Session, req_id: str | None, p: m.ChatRef) -> None:
        self._spawn(session, req_id, "typing.start", self._typing(session, p.chat_id, True))

    def _on_typing_stop(self, session: Session, req_id: str | None, p: m.ChatRef) -> None:
        self._spawn(session, req_id, "typing.stop", self._typing(session, p.chat_id, False))

    async def _typing(self, session: Session, chat_id: int, starting: bool) -> dict[str, Any]:
        await self._check_member(session, chat_id)
        if session.closing:
            return {}
        if starting:
            session.start_typing(chat_id)
            if self.presence.start_typing(chat_id, session.user_id):
                self._publish_typing(chat_id, session.user_id, True, session.conn_id)
            else:  # keeps other nodes' view of the typist alive
                self._publish_typing(chat_id, session.user_id, True, session.conn_id, True)
        else:
            session.stop_typing(chat_id)
            if self.presence.stop_typing(chat_id, session.user_id):
                self._publish_typing(chat_id, session.user_id, False, session.conn_id)
        return {}

    def _typing_lapsed(self, chat_id: int, user_id: int) -> None:
        for s in self.registry.sessions_of(user_id):
            s.stop_typing(chat_id)
        self._publish_typing(chat_id, user_id, False, None)

    def _publish_typing(
        self, chat_id: int, user_id: int, typing: bool, exclude: str | None,
        renew: bool = False,
    ) -> None:
        frame = m.event_frame(
            "chat.user.typing", m.TypingOut(chat_id=chat_id, user_id=user_id, typing=typing)
        )
        self.bus.publish_chat(chat_id, frame, exclude, (user_id, typing), renew)

    def _on_refresh(self, session: Session, req_id: str | None, p: m.AuthRefresh) -> None:
        try:
            fresh = self.verifier.verify(p.token)
            if fresh.user_id != session.user_id:
                raise Unauthorized("token is for another user")
            if (fresh.role, fresh.demo) != (session.identity.role, session.identity.demo):
                # What a socket may do is fixed for its life: a new role (a promotion,
                # a demotion) takes a new connection with the new token.
                raise Unauthorized("token is for another role: reconnect with it")
            if fresh.exp <= session.identity.exp:
                raise Unauthorized("token does not extend the current one")
        except Unauthorized as exc:
            metrics.count_request("auth.refresh", exc.code)
            metrics.REJECTIONS.labels(reason="auth").inc()
            self._reply_error(session, req_id, exc)
            return
        session.identity = fresh
        self._schedule_expiry(session)
        self._reply(session, req_id, "auth.refresh", {"exp": int(fresh.exp)})
