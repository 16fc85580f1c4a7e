"""Settings read once from the environment (and CLI flags); no I/O beyond that."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return default if raw in (None, "") else float(raw)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    ws_port: int = 8765
    http_port: int = 8080
    data_dir: Path = Path(".beseda")
    database_url: str | None = None
    redis_url: str | None = None
    node_id: str = ""

    # auth
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: float = 5.0

    # database
    db_pool_min: int = 2
    db_pool_max: int = 10
    db_acquire_timeout_s: float = 5.0
    db_statement_timeout_ms: int = 10_000
    pgbouncer: bool = False
    writer_lanes: int = 2
    writer_max_batch: int = 64
    search_index_interval_s: float = 0.5

    # limits (PROTOCOL.md section 9)
    max_frame_bytes: int = 64 * 1024
    max_text_bytes: int = 32 * 1024
    max_metadata_bytes: int = 4 * 1024
    send_queue_bytes: int = 1024 * 1024
    max_pending_requests: int = 256
    rate_per_s: float = 50.0
    rate_burst: int = 200
    rate_violations_before_close: int = 20
    bad_frames_before_close: int = 50
    typing_ttl_s: float = 5.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    handshake_timeout_s: float = 10.0
    max_connections_per_user: int = 20
    max_connections_per_ip: int = 1000
    compression: bool = True
    default_lang: str = "ru"
    drain_timeout_s: float = 10.0
    ready_timeout_s: float = 2.0

    # scale-out (REDIS_URL set): docs/scale.md
    redis_cluster: bool = False
    redis_heartbeat_s: float = 1.0
    redis_node_ttl_s: float = 5.0
    order_hold_s: float = 0.15
    order_lookback_s: float = 3.0
    log_level: str = "INFO"

    # REST adapter: attachments and translation (docs/rest.md, docs/translation.md)
    max_upload_bytes: int = 25 * 1024 * 1024
    url_secret: str | None = None
    url_ttl_s: int = 24 * 3600
    translate_provider: str | None = None  # "libretranslate" or "deepl"; unset: none
    translate_url: str | None = None  # required with a provider; no default host
    translate_api_key: str | None = None
    translate_timeout_s: float = 10.0
    translate_workers: int = 2
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Settings":
        e = os.environ.get
        return cls(
            host=e("BESEDA_HOST", "127.0.0.1"),
            ws_port=_env_int("BESEDA_WS_PORT", 8765),
            http_port=_env_int("BESEDA_HTTP_PORT", 8080),
            data_dir=Path(e("BESEDA_DATA_DIR", ".beseda")),
            database_url=e("DATABASE_URL") or None,
            redis_url=e("REDIS_URL") or None,
            node_id=e("BESEDA_NODE_ID", ""),
            jwt_secret=e("BESEDA_JWT_SECRET") or None,
            jwt_public_key=e("BESEDA_JWT_PUBLIC_KEY") or None,
            jwt_jwks=e("BESEDA_JWT_JWKS") or None,
            jwt_issuer=e("BESEDA_JWT_ISSUER") or None,
            jwt_audience=e("BESEDA_JWT_AUDIENCE") or None,
            jwt_leeway_s=_env_float("BESEDA_JWT_LEEWAY_S", 5.0),
            db_pool_min=_env_int("BESEDA_DB_POOL_MIN", 2),
            db_pool_max=_env_int("BESEDA_DB_POOL_MAX", 10),
            db_acquire_timeout_s=_env_float("BESEDA_DB_ACQUIRE_TIMEOUT_S", 5.0),
            db_statement_timeout_ms=_env_int("BESEDA_DB_STATEMENT_TIMEOUT_MS", 10_000),
            pgbouncer=_env_bool("BESEDA_PGBOUNCER", False),
            writer_lanes=_env_int("BESEDA_WRITER_LANES", 2),
            writer_max_batch=_env_int("BESEDA_WRITER_MAX_BATCH", 64),
            search_index_interval_s=_env_float("BESEDA_SEARCH_INDEX_INTERVAL_S", 0.5),
            max_frame_bytes=_env_int("BESEDA_MAX_FRAME_BYTES", 64 * 1024),
            max_text_bytes=_env_int("BESEDA_MAX_TEXT_BYTES", 32 * 1024),
            max_metadata_bytes=_env_int("BESEDA_MAX_METADATA_BYTES", 4 * 1024),
            send_queue_bytes=_env_int("BESEDA_SEND_QUEUE_BYTES", 1024 * 1024),
            max_pending_requests=_env_int("BESEDA_MAX_PENDING_REQUESTS", 256),
            rate_per_s=_env_float("BESEDA_RATE_PER_S", 50.0),
            rate_burst=_env_int("BESEDA_RATE_BURST", 200),
            rate_violations_before_close=_env_int("BESEDA_RATE_VIOLATIONS_BEFORE_CLOSE", 20),
            bad_frames_before_close=_env_int("BESEDA_BAD_FRAMES_BEFORE_CLOSE", 50),
            typing_ttl_s=_env_float("BESEDA_TYPING_TTL_S", 5.0),
            ping_interval_s=_env_float("BESEDA_PING_INTERVAL_S", 20.0),
            ping_timeout_s=_env_float("BESEDA_PING_TIMEOUT_S", 20.0),
            handshake_timeout_s=_env_float("BESEDA_HANDSHAKE_TIMEOUT_S", 10.0),
            max_connections_per_user=_env_int("BESEDA_MAX_CONN_PER_USER", 20),
            max_connections_per_ip=_env_int("BESEDA_MAX_CONN_PER_IP", 1000),
            compression=_env_bool("BESEDA_COMPRESSION", True),
            default_lang=e("BESEDA_DEFAULT_LANG", "ru"),
            drain_timeout_s=_env_float("BESEDA_DRAIN_TIMEOUT_S", 10.0),
            ready_timeout_s=_env_float("BESEDA_READY_TIMEOUT_S", 2.0),
            redis_cluster=_env_bool("BESEDA_REDIS_CLUSTER", False),
            redis_heartbeat_s=_env_float("BESEDA_REDIS_HEARTBEAT_S", 1.0),
            redis_node_ttl_s=_env_float("BESEDA_REDIS_NODE_TTL_S", 5.0),
            order_hold_s=_env_float("BESEDA_ORDER_HOLD_S", 0.15),
            order_lookback_s=_env_float("BESEDA_ORDER_LOOKBACK_S", 3.0),
            log_level=e("BESEDA_LOG_LEVEL", "INFO"),
            max_upload_bytes=_env_int("BESEDA_MAX_UPLOAD_BYTES", 25 * 1024 * 1024),
            url_secret=e("BESEDA_URL_SECRET") or None,
            url_ttl_s=_env_int("BESEDA_URL_TTL_S", 24 * 3600),
            translate_provider=e("BESEDA_TRANSLATE_PROVIDER") or None,
            translate_url=e("BESEDA_TRANSLATE_URL") or None,
            translate_api_key=e("BESEDA_TRANSLATE_API_KEY") or None,
            translate_timeout_s=_env_float("BESEDA_TRANSLATE_TIMEOUT_S", 10.0),
            translate_workers=_env_int("BESEDA_TRANSLATE_WORKERS", 2),
        )

    def with_(self, **changes: object) -> "Settings":
        return replace(self, **changes)  # type: ignore[arg-type]
