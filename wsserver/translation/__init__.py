"""Translation off the hot path: providers, the durable queue and its worker."""
