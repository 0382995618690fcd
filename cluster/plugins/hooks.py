"""Hook specifications for proxy plugins.

Each dataclass below is one hook. A plugin is a plain class with a `name` and a method named after the
hook (RequestHook -> `request`), taking the HttpFlow, sync or async; it implements only what it needs.
The chain calls hooks in the Service's `plugins:` order, for the plugins whose condition matched this
request. An exception fails the request closed (500) unless the plugin entry sets `failOpen`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from wardgate.cluster.plugins.flow import HttpFlow


@dataclass(frozen=True, slots=True)
class Hook:
    name: ClassVar[str]
    flow: HttpFlow


@dataclass(frozen=True, slots=True)
class RequestHook(Hook):
    """The request line, headers and whole body are known (flow.request), after authorization.
    Setting flow.response answers: the `request` hooks of later plugins and the upstream are skipped."""

    name: ClassVar[str] = "request"


@dataclass(frozen=True, slots=True)
class ResponseHeadersHook(Hook):
    """The response status and headers are known (flow.response), from the upstream or from a plugin
    that answered. flow.response.body is None while the upstream body streams unbuffered. Runs for
    every plugin whose request phase ran (plugins after one that answered never saw the request)."""

    name: ClassVar[str] = "response_headers"


@dataclass(frozen=True, slots=True)
class ResponseHook(Hook):
    """The whole response body is in flow.response.body. A plugin defining this hook makes the proxy
    buffer the upstream response whenever the plugin applies; otherwise responses keep streaming."""

    name: ClassVar[str] = "response"
