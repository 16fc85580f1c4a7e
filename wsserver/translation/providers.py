"""Translation providers behind one small interface, configured by environment.

`libretranslate` speaks LibreTranslate's `POST /translate`; `deepl` speaks DeepL's
`POST /v2/translate`. Both need BESEDA_TRANSLATE_URL: there is no default host, so
an unconfigured node never sends text anywhere. Calls are async (httpx) with a
timeout, so a slow provider never holds the event loop.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import httpx

from ..config import Settings

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """The provider could not translate now (down, slow, refused); retry later."""


class Provider(Protocol):
    name: str

    async def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        """Translations of `texts` from `source` into `target`, in order."""
        ...

    async def close(self) -> None: ...


class _HttpProvider:
    name = "http"

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), trust_env=False, follow_redirects=False
        )

    async def _post(self, path: str, payload: dict[str, Any], headers: dict[str, str]) -> Any:
        try:
            r = await self.client.post(self.url + path, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise ProviderError(f"{self.name}: {type(exc).__name__}") from None
        if r.status_code != 200:
            raise ProviderError(f"{self.name}: http {r.status_code}")
        try:
            return r.json()
        except ValueError:
            raise ProviderError(f"{self.name}: answer is not json") from None

    async def close(self) -> None:
        await self.client.aclose()


class LibreTranslate(_HttpProvider):
    """LibreTranslate (or a compatible server): `q` may be a list."""

    name = "libretranslate"
    CODES = {"ru": "ru", "en": "en", "zh": "zh"}

    async def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        payload: dict[str, Any] = {
            "q": texts, "source": self.CODES[source], "target": self.CODES[target],
            "format": "text",
        }
        if self.api_key:
            payload["api_key"] = self.api_key
        body = await self._post("/translate", payload, {})
        out = body.get("translatedText") if isinstance(body, dict) else None
        if isinstance(out, str) and len(texts) == 1:
            out = [out]
        if not isinstance(out, list) or len(out) != len(texts) or not all(
            isinstance(t, str) for t in out
        ):
            raise ProviderError("libretranslate: unexpected answer")
        return out


class DeepL(_HttpProvider):
    """DeepL API v2 (`text` is a list; the key goes in the Authorization header)."""

    name = "deepl"
    SOURCE = {"ru": "RU", "en": "EN", "zh": "ZH"}
    TARGET = {"ru": "RU", "en": "EN-US", "zh": "ZH-HANS"}

    async def translate(self, texts: list[str], source: str, target: str) -> list[str]:
        headers = {"Authorization": f"DeepL-Auth-Key {self.api_key}"} if self.api_key else {}
        body = await self._post(
            "/v2/translate",
            {"text": texts, "source_lang": self.SOURCE[source], "target_lang": self.TARGET[target]},
            headers,
        )
        items = body.get("translations") if isinstance(body, dict) else None
        if not isinstance(items, list) or len(items) != len(texts):
            raise ProviderError("deepl: unexpected answer")
        out = [i.get("text") if isinstance(i, dict) else None for i in items]
        if not all(isinstance(t, str) for t in out):
            raise ProviderError("deepl: unexpected answer")
        return out  # type: ignore[return-value]


PROVIDERS: dict[str, type[_HttpProvider]] = {"libretranslate": LibreTranslate, "deepl": DeepL}


def make_provider(settings: Settings) -> Provider | None:
    """The configured provider, or None when translation is off."""
    kind = (settings.translate_provider or "").strip().lower()
    if not kind or kind == "none":
        return None
    cls = PROVIDERS.get(kind)
    if cls is None:
        raise ValueError(f"unknown translation provider: {kind}")
    if not settings.translate_url:
        raise ValueError("BESEDA_TRANSLATE_URL is required with a translation provider")
    return cls(settings.translate_url, settings.translate_api_key, settings.translate_timeout_s)
