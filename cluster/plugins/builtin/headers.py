"""Headers: set or remove request and response headers when the plugin's condition matches."""

from __future__ import annotations

from wardgate.cluster.plugins.flow import HttpFlow
from wardgate.cluster.resources.service import HeadersPluginSpec


class Headers:
    """Request edits before the upstream sees the request; response edits before the client sees them."""

    Config = HeadersPluginSpec

    def __init__(self, name: str, config: HeadersPluginSpec) -> None:
        self.name = name
        self.config = config

    def request(self, flow: HttpFlow) -> None:
        headers = flow.request.headers
        for removed in self.config.remove_request_headers:
            headers.popall(removed, None)
        for entry in self.config.set_request_headers:
            headers[entry.name] = entry.value

    def response_headers(self, flow: HttpFlow) -> None:
        assert flow.response is not None
        headers = flow.response.headers
        for removed in self.config.remove_response_headers:
            headers.popall(removed, None)
        for entry in self.config.set_response_headers:
            headers[entry.name] = entry.value
