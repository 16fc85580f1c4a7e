"""Legacy REST endpoints, the internal API and the operational endpoints (Starlette)."""
