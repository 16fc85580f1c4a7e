"""Beseda: real-time chat server (WebSocket hot path, store, bus, auth)."""

__version__ = "0.1.0"
