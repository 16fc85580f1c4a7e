"""Translations: asking the provider, storing what it gave on a message (with the
chat's next rev and a `chat.message.update`), and the per-message_key cache that
`POST /api/v1/chat-message` uses."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import lang
from ..protocol import messages as m
from ..store import ATTACHMENTS_COL, MSG_COLS, message_out
from .providers import Provider, ProviderError

if TYPE_CHECKING:
    from ..app import Node

log = logging.getLogger(__name__)

LANGS = lang.LANGS


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(slots=True)
class Translation:
    """The original under its language, translations as far as they exist."""

    lang: str
    texts: dict[str, str | None]

    @property
    def missing(self) -> list[str]:
        return [code for code in LANGS if self.texts.get(code) is None]

    def wire(self) -> dict[str, Any]:
        return {**{code: self.texts.get(code) for code in LANGS}, "lang": self.lang,
                "missing": self.missing}


class Translations:
    def __init__(self, node: "Node", provider: Provider | None) -> None:
        self.node = node
        self.store = node.store
        self.provider = provider

    async def ask(self, text: str, source: str, targets: list[str]) -> dict[str, str]:
        """What the provider gives for each target now; failed targets are left out."""
        if self.provider is None or not targets:
            return {}
        provider = self.provider

        async def one(target: str) -> tuple[str, str | None]:
            try:
                out = await provider.translate([text], source, target)
                return target, out[0]
            except ProviderError as exc:
                log.warning("translate.failed provider=%s target=%s reason=%s",
                            provider.name, target, exc)
                return target, None

        results = await asyncio.gather(*(one(t) for t in targets))
        return {t: v for t, v in results if v is not None}

    async def apply(
        self, message_id: int, original: str, texts: dict[str, str]
    ) -> m.MessageOut | None:
        """Adds translations to a message whose original is still `original`; takes
        the chat's next rev and pushes `chat.message.update`. None when the message
        changed, was deleted, or already had them."""
        async with self.store.connection() as conn, conn.transaction():
            head = await conn.fetchrow(
                "SELECT chat_id FROM messages WHERE id = $1", message_id
            )
            if head is None:
                return None
            await conn.execute("SELECT 1 FROM chats WHERE id = $1 FOR UPDATE", head["chat_id"])
            row = await conn.fetchrow(
                "SELECT content, lang, deleted_at FROM messages WHERE id = $1 FOR UPDATE",
                message_id,
            )
            content = dict(row["content"] or {})
            if row["deleted_at"] is not None or content.get(row["lang"]) != original:
                return None
            new = {k: v for k, v in texts.items() if k != row["lang"] and content.get(k) != v}
            if not new:
                return None
            rec = await conn.fetchrow(
                f"""WITH bump AS (UPDATE chats SET rev = rev + 1 WHERE id = $1 RETURNING rev)
                    UPDATE messages m SET content = m.content || $2::jsonb,
                           rev = (SELECT rev FROM bump)
                     WHERE m.id = $3
                 RETURNING {MSG_COLS}, {ATTACHMENTS_COL}""",
                head["chat_id"], new, message_id,
            )
            members = [
                r["user_id"] for r in await conn.fetch(
                    "SELECT user_id FROM chat_participants WHERE chat_id = $1 AND left_at IS NULL",
                    head["chat_id"],
                )
            ]
        msg = message_out(rec)
        self.node.bus.publish_users(members, m.event_frame("chat.message.update", msg))
        return msg

    # -- POST /api/v1/chat-message --------------------------------------------------

    async def for_request(
        self, chat_id: int, message_key: str, text: str, fallback_lang: str
    ) -> Translation:
        """Translates `text` for the legacy endpoint: what the message or the cache
        already has is reused, the rest asked for now; results are cached by
        message_key and stored on the message when it exists with this text."""
        digest = text_hash(text)
        async with self.store.connection() as conn:
            msg = await conn.fetchrow(
                """SELECT id, content, lang FROM messages
                    WHERE chat_id = $1 AND message_key = $2 AND deleted_at IS NULL""",
                chat_id, message_key,
            )
            cached = await conn.fetchrow(
                "SELECT lang, texts FROM translation_cache WHERE chat_id = $1 AND message_key = $2"
                " AND source_hash = $3",
                chat_id, message_key, digest,
            )
        texts: dict[str, str | None] = {}
        source = lang.detect(text) or fallback_lang
        on_message = msg is not None and (msg["content"] or {}).get(msg["lang"]) == text
        if on_message:
            source = msg["lang"]
            texts.update({k: v for k, v in (msg["content"] or {}).items() if v})
        if cached is not None:
            source = cached["lang"] if not on_message else source
            for k, v in cached["texts"].items():
                texts.setdefault(k, v)
        texts[source] = text
        wanted = [code for code in LANGS if not texts.get(code)]
        got = await self.ask(text, source, wanted)
        texts.update(got)
        if got or cached is None:
            await self._cache(chat_id, message_key, digest, source, texts)
        if on_message and msg is not None:
            extra = {k: v for k, v in texts.items() if v and k != source}
            if any((msg["content"] or {}).get(k) != v for k, v in extra.items()):
                await self.apply(msg["id"], text, extra)  # type: ignore[arg-type]
        return Translation(source, texts)

    async def _cache(
        self, chat_id: int, message_key: str, digest: str, source: str,
        texts: dict[str, str | None],
    ) -> None:
        found = {k: v for k, v in texts.items() if v and k != source}
        async with self.store.connection() as conn:
            await conn.execute(
                """INSERT INTO translation_cache (chat_id, message_key, source_hash, lang, texts)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (chat_id, message_key) DO UPDATE
                      SET source_hash = EXCLUDED.source_hash, lang = EXCLUDED.lang,
                          texts = CASE WHEN translation_cache.source_hash = EXCLUDED.source_hash
                                       THEN translation_cache.texts || EXCLUDED.texts
                                       ELSE EXCLUDED.texts END,
                          updated_at = now()""",
                chat_id, message_key, digest, source, found,
            )

    async def cached(self, chat_id: int, message_key: str, original: str) -> dict[str, str]:
        async with self.store.connection() as conn:
            texts = await conn.fetchval(
                """SELECT texts FROM translation_cache
                    WHERE chat_id = $1 AND message_key = $2 AND source_hash = $3""",
                chat_id, message_key, text_hash(original),
            )
        return dict(texts or {})
