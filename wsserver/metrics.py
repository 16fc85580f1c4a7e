"""Prometheus metrics: one namespace (`beseda`), a subsystem, unit suffixes.

Labels take only the bounded values listed beside each metric (docs/ops.md); no label
ever carries a user, chat or connection id. One process per node, so the default
registry is enough (no multiprocess mode; docs/ops.md says why).
"""

from __future__ import annotations

import asyncio
import gc
import time

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# Bounded label values, named here so tests and docs can check them.
HANDSHAKE_OUTCOMES = (
    "ok", "unauthorized", "limited", "not_found", "draining", "timeout", "failed",
)
REJECTION_REASONS = (
    "auth", "rate", "size", "policy", "invalid", "pending",
    "connections_user", "connections_ip",
)

BUILD_INFO = Gauge("beseda_build_info", "Always 1; the running version", ["version"])

# -- connections ----------------------------------------------------------------------

CONNECTIONS_OPEN = Gauge("beseda_connections_open", "WebSocket connections open now")
HANDSHAKES = Counter(
    "beseda_handshakes_total", "WebSocket handshakes by outcome", ["outcome"]
)
CLOSES = Counter(
    "beseda_connection_closes_total",
    "Connections closed, by the close code the side that closed first sent",
    ["code"],
)
PING_TIMEOUTS = Counter(
    "beseda_ping_timeouts_total", "Connections closed because a keepalive pong never came"
)

# -- requests and events ----------------------------------------------------------------

REQUESTS = Counter(
    "beseda_requests_total", "Client requests by type and result", ["type", "result"]
)
EVENTS_SENT = Counter("beseda_events_sent_total", "Frames pushed to sockets, by kind", ["kind"])
REJECTIONS = Counter(
    "beseda_rejections_total", "Requests or connections refused, by reason", ["reason"]
)

# -- latency of a message ------------------------------------------------------------------

SEND_TO_COMMIT = Histogram(
    "beseda_send_to_commit_seconds",
    "From a message.send frame read to its batch committed",
    buckets=_LATENCY_BUCKETS,
)
SEND_TO_ACK = Histogram(
    "beseda_send_to_ack_seconds",
    "From a message.send frame read to its ack written",
    buckets=_LATENCY_BUCKETS,
)
COMMIT_TO_DELIVERY = Histogram(
    "beseda_commit_to_delivery_seconds",
    "From a batch commit to the event written to local sockets",
    buckets=_LATENCY_BUCKETS,
)

EVENT_LOOP_LAG = Histogram(
    "beseda_event_loop_lag_seconds",
    "How late a 100 ms timer fires on the event loop: time every socket waits for "
    "the loop beyond its own work (sampled ten times a second)",
    buckets=_LATENCY_BUCKETS,
)

GC_PAUSE = Histogram(
    "beseda_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector, by generation (0, 1, 2)",
    ["generation"],
    buckets=_LATENCY_BUCKETS,
)

# -- batch writer --------------------------------------------------------------------------

WRITER_BATCH_SIZE = Histogram(
    "beseda_writer_batch_size", "Messages per writer batch", buckets=_BATCH_BUCKETS
)
WRITER_BATCH_SECONDS = Histogram(
    "beseda_writer_batch_seconds", "Time of one writer batch round trip", buckets=_LATENCY_BUCKETS
)
WRITER_QUEUE = Gauge("beseda_writer_queue_depth", "Sends waiting for the writer")

# -- database --------------------------------------------------------------------------------

DB_ERRORS = Counter("beseda_db_errors_total", "Database errors by kind", ["kind"])
DB_POOL_SIZE = Gauge(
    "beseda_db_pool_connections", "Database pool connections by state (idle, busy, max)",
    ["state"],
)
DB_POOL_WAITING = Gauge(
    "beseda_db_pool_waiting", "Tasks waiting now to acquire a pool connection"
)
DB_POOL_ACQUIRE_SECONDS = Histogram(
    "beseda_db_pool_acquire_seconds",
    "Time to acquire a pool connection (successful acquires)",
    buckets=_LATENCY_BUCKETS,
)
DEPENDENCY_UP = Gauge(
    "beseda_dependency_up",
    "1 when the last readiness check reached the dependency, else 0",
    ["dependency"],
)

# -- send queues -------------------------------------------------------------------------------

SLOW_CONSUMER_CLOSES = Counter(
    "beseda_slow_consumer_closes_total", "Connections closed because their send queue filled"
)
# Read at scrape time from every socket rather than observed per event: the push
# path is the hottest code there is.
SEND_QUEUE_BUFFERED_BYTES = Gauge(
    "beseda_send_queue_buffered_bytes", "Bytes waiting in all sockets' send queues now"
)
SEND_QUEUE_LARGEST_BYTES = Gauge(
    "beseda_send_queue_largest_bytes", "Bytes waiting in the fullest socket's send queue now"
)

# -- bus ---------------------------------------------------------------------------------------

BUS_PUBLISH_SECONDS = Histogram(
    "beseda_bus_publish_seconds", "Bus publish latency", buckets=_LATENCY_BUCKETS
)
BUS_ERRORS = Counter("beseda_bus_errors_total", "Bus errors by kind", ["kind"])
ORDER_EVENTS = Counter(
    "beseda_order_events_total",
    "Hold-back results for chat.message.new across nodes",
    ["result"],
)
BUS_MESSAGES = Counter(
    "beseda_bus_messages_total",
    "Cross-node bus envelopes, sent (out) or received (in)",
    ["kind"],
)
BUS_RESYNC_CLOSES = Counter(
    "beseda_bus_resync_closes_total",
    "Sockets closed with 1012 because they may have missed cross-node events",
)
BUS_UP = Gauge("beseda_bus_up", "1 while the node reaches Redis, else 0")

# -- translation (set by the translation worker) -----------------------------------------------

TRANSLATION_QUEUE_DEPTH = Gauge(
    "beseda_translation_queue_depth", "Translation jobs waiting to run"
)
TRANSLATION_OLDEST_AGE_SECONDS = Gauge(
    "beseda_translation_oldest_job_age_seconds",
    "Age of the oldest waiting translation job (0 when none waits)",
)

# -- search indexer (wsserver/search_index.py) --------------------------------------------------

SEARCH_INDEXED = Counter(
    "beseda_search_indexed_messages_total",
    "Messages whose search grams this node wrote (new, edited, translated or deleted)",
)
SEARCH_INDEX_LAG_SECONDS = Gauge(
    "beseda_search_index_lag_seconds",
    "Age of the oldest queue entry in the indexer's last pass (0 when the queue was empty)",
)
SEARCH_INDEX_ERRORS = Counter(
    "beseda_search_index_errors_total", "Indexer passes that failed (retried next pass)"
)

_request_children: dict[tuple[str, str], Counter] = {}


def count_request(kind: str, result: str) -> None:
    """REQUESTS by (type, result), with the labelled child cached (hot path)."""
    child = _request_children.get((kind, result))
    if child is None:
        child = _request_children[(kind, result)] = REQUESTS.labels(type=kind, result=result)
    child.inc()


async def watch_event_loop(period_s: float = 0.1) -> None:
    """Feeds EVENT_LOOP_LAG until cancelled: a loop busy with one long callback (a
    huge fan-out, a slow JSON decode, a garbage collection) shows here first."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - due))


_gc_started: list[float] = []


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started.append(time.perf_counter())
    elif _gc_started:
        GC_PAUSE.labels(generation=str(info.get("generation", 0))).observe(
            time.perf_counter() - _gc_started.pop())


def watch_gc() -> None:
    """Times every collection into GC_PAUSE (once per process)."""
    if _on_gc not in gc.callbacks:
        gc.callbacks.append(_on_gc)
