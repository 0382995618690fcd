"""The HTTP client behind Lua's `http.client()`: an operator allow-list of base URLs, bounded calls.

A script may only set a base URL under one of `lua.http.allowedBaseURLs` (same scheme, host and
port; the path at a segment boundary), and a call's path can never climb out of it. Redirects are
not followed, bodies are capped, and every call has a timeout. Failures the script can handle
(unreachable, timeout, too large) come back as `nil, err`; policy violations raise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from wardgate.cluster.resources.service import LuaHttpSpec

_HEADER_NAME = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_FORBIDDEN_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"te"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HttpPolicyError(Exception):
    """The script tried to reach something the allow-list does not cover, or sent an invalid request."""


@dataclass(frozen=True, slots=True)
class _Base:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> _Base:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise HttpPolicyError(f"{url!r} is not an http:// or https:// URL with a host")
        if parts.query or parts.fragment or parts.username or parts.password or "\\" in url or "%" in parts.path:
            raise HttpPolicyError(f"{url!r}: no query, fragment, user info, '%' or '\\' in a base URL")
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError as exc:
            raise HttpPolicyError(f"{url!r}: {exc}") from exc
        path = parts.path.rstrip("/")
        if any(s in (".", "..") for s in path.split("/")):
            raise HttpPolicyError(f"{url!r}: '.' or '..' in the path")
        return cls(parts.scheme, parts.hostname.lower(), port, path)

    def covers(self, other: _Base) -> bool:
        return (self.scheme, self.host, self.port) == (other.scheme, other.host, other.port) and (
            other.path == self.path or other.path.startswith(self.path + "/")
        )

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def _check_path(path: str) -> None:
    if path and not path.startswith(("/", "?")):
        raise HttpPolicyError(f"request path {path!r} must start with '/'")
    if path.startswith("//") or any(c in path for c in "\\#@ \t\r\n\x00") or not path.isascii():
        raise HttpPolicyError(f"request path {path!r} has characters that are not allowed")
    segments = path.split("?", 1)[0].lower().replace("%2e", ".").split("/")
    if any(s in (".", "..") for s in segments) or "%2f" in path.lower() or "%5c" in path.lower():
        raise HttpPolicyError(f"request path {path!r} may not leave its base URL")


class LuaHttp:
    """Allow-list checks and the calls themselves for one Lua plugin."""

    def __init__(self, spec: LuaHttpSpec) -> None:
        self.spec = spec
        self._allowed = tuple(_Base.parse(u) for u in spec.allowed_base_urls)

    def base(self, url: str) -> str:
        """The normalised base URL, or HttpPolicyError when no allowed entry covers it."""
        wanted = _Base.parse(url)
        if not any(entry.covers(wanted) for entry in self._allowed):
            raise HttpPolicyError(f"http client: base URL {url!r} is not in this plugin's allowedBaseURLs")
        return wanted.url()

    def request_headers(self, pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        for name, value in pairs:
            if not _HEADER_NAME.match(name) or name.lower() in _FORBIDDEN_HEADERS:
                raise HttpPolicyError(f"http client: header {name!r} may not be set")
            if any(c in value for c in b"\r\n\x00"):
                raise HttpPolicyError(f"http client: header {name!r} has a line break or NUL")
            headers[name.decode()] = value.decode("latin-1")
        return headers

    async def call(
        self,
        session: aiohttp.ClientSession,
        base: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> tuple[int, bytes, dict[str, str]] | str:
        """(status, body, lower-cased headers), or an error message for the script (`nil, err`)."""
        _check_path(path)
        wanted = _Base.parse(base)
        if not any(entry.covers(wanted) for entry in self._allowed):
            raise HttpPolicyError(f"http client: base URL {base!r} is not allowed")
        url = URL(base + path, encoded=True)
        if (url.scheme, (url.host or "").lower(), url.port) != (wanted.scheme, wanted.host, wanted.port):
            raise HttpPolicyError(f"http client: {path!r} would leave {base!r}")
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout)
        limit = self.spec.max_response_bytes
        try:
            async with session.request(
                method, url, headers=headers, data=body, allow_redirects=False, timeout=timeout
            ) as resp:
                data = bytearray()
                async for chunk in resp.content.iter_any():
                    data += chunk
                    if len(data) > limit:
                        return f"response from {base}{path} is larger than {limit} bytes"
                return resp.status, bytes(data), {k.lower(): v for k, v in resp.headers.items()}
        except TimeoutError:
            return f"{method} {base}{path} timed out after {self.spec.timeout:g}s"
        except aiohttp.ClientError as exc:
            return f"{method} {base}{path} failed: {type(exc).__name__}: {exc}"
