"""CORS for a Service config (`http.cors`): the headers on an answer, and the preflight answered without
identity (browsers send no credentials on OPTIONS preflights)."""

from __future__ import annotations

from aiohttp import web

from wardgate.cluster.resources.service import Cors


def cors_headers(cors: Cors, origin: str) -> dict[str, str] | None:
    """The headers for an allowed `origin`, None when it is not allowed."""
    if "*" not in cors.allow_origins and origin not in cors.allow_origins:
        return None
    headers = {
        "Access-Control-Allow-Origin": origin if cors.allow_credentials or "*" not in cors.allow_origins else "*",
        "Vary": "Origin",
    }
    if cors.allow_credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    if cors.expose_headers:
        headers["Access-Control-Expose-Headers"] = ", ".join(cors.expose_headers)
    return headers


def is_preflight(request: web.BaseRequest) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def preflight(cors: Cors, origin: str) -> web.Response:
    headers = cors_headers(cors, origin)
    if headers is None:
        return web.Response(status=403, text="origin not allowed")
    headers.update(
        {
            "Access-Control-Allow-Methods": ", ".join(cors.allow_methods),
            "Access-Control-Allow-Headers": ", ".join(cors.allow_headers),
            "Access-Control-Max-Age": str(cors.max_age),
        }
    )
    return web.Response(status=204, headers=headers)
