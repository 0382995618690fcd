"""Field types shared by several kinds and modules: durations, header names and values, upstream URLs, and
references to Secrets."""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

from wardgate.cluster.resources.meta import Model, Name

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `30`, `1.5`, `"100ms"`, `"30s"`, `"5m"`, `"2h"`, `"30d"`."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (e.g. '500ms', '30s', '5m', '2h', '30d')")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError("a duration is a number of seconds or a string like '30s'")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def check_header_name(value: str) -> str:
    if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value):
        raise ValueError(f"{value!r} is not a valid HTTP header name")
    return value


def check_header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value must not contain CR, LF or NUL")
    return value


HeaderName = Annotated[str, BeforeValidator(check_header_name)]
HeaderValue = Annotated[str, BeforeValidator(check_header_value)]


def check_upstream_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"{value!r}: a host is required")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r}: no query, fragment or user info in an upstream URL")
    return value


UpstreamUrl = Annotated[str, AfterValidator(check_upstream_url)]
"""An upstream's `http://` or `https://` URL: a Service's `url`, one of its `endpoints`, an MCP server."""


class SecretRef(Model):
    """A reference to one key of a Secret resource (`value` unless `key` says otherwise)."""

    from_secret: Name
    key: str = "value"
