"""Proxy plugins: the per-Service chain of request/response hooks (Lua, Envoy ExtProc, built-ins)."""
