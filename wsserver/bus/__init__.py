"""Event fan-out between nodes: in-process (one node) or Redis (many)."""
