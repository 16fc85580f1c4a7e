"""Prometheus metrics: one namespace (`beseda`), unit suffixes, bounded labels only.

No label ever carries a user, chat or connection id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

CONNECTIONS_OPEN = Gauge("beseda_connections_open", "WebSocket connections open now")
HANDSHAKES = Counter(
    "beseda_handshakes_total", "WebSocket handshakes by outcome", ["outcome"]
)
CLOSES = Counter("beseda_connection_closes_total", "Connections closed, by close code", ["code"])
REQUESTS = Counter(
    "beseda_requests_total", "Client requests by type and result", ["type", "result"]
)
EVENTS_SENT = Counter("beseda_events_sent_total", "Frames pushed to sockets, by kind", ["kind"])
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
WRITER_BATCH_SIZE = Histogram(
    "beseda_writer_batch_size", "Messages per writer batch", buckets=_BATCH_BUCKETS
)
WRITER_BATCH_SECONDS = Histogram(
    "beseda_writer_batch_seconds", "Time of one writer batch round trip", buckets=_LATENCY_BUCKETS
)
WRITER_QUEUE = Gauge("beseda_writer_queue_depth", "Sends waiting for the writer")
DB_ERRORS = Counter("beseda_db_errors_total", "Database errors by kind", ["kind"])
DB_POOL_SIZE = Gauge("beseda_db_pool_connections", "Database pool connections", ["state"])
SLOW_CONSUMER_CLOSES = Counter(
    "beseda_slow_consumer_closes_total", "Connections closed because their send queue filled"
)
SEND_QUEUE_BYTES = Histogram(
    "beseda_send_queue_bytes",
    "Write buffer size of a socket when an event is queued",
    buckets=(0, 1024, 8192, 65536, 262144, 1048576, 4194304),
)
REJECTIONS = Counter(
    "beseda_rejections_total", "Requests or connections refused, by reason", ["reason"]
)
BUS_PUBLISH_SECONDS = Histogram(
    "beseda_bus_publish_seconds", "Bus publish latency", buckets=_LATENCY_BUCKETS
)
BUS_ERRORS = Counter("beseda_bus_errors_total", "Bus errors by kind", ["kind"])
ORDER_EVENTS = Counter(
    "beseda_order_events_total",
    "Hold-back outcomes for chat.message.new across nodes",
    ["outcome"],
)
BUS_MESSAGES = Counter(
    "beseda_bus_messages_total", "Cross-node bus envelopes, by direction", ["direction"]
)
BUS_RESYNC_CLOSES = Counter(
    "beseda_bus_resync_closes_total",
    "Sockets closed with 1012 because they may have missed cross-node events",
)
BUS_UP = Gauge("beseda_bus_up", "1 while the node reaches Redis, else 0")
