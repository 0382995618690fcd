"""DirectResponse: answer from the gateway; the upstream is never contacted."""

from __future__ import annotations

from multidict import CIMultiDict

from wardgate.cluster.plugins.flow import HttpFlow, Response
from wardgate.cluster.resources.service import DirectResponseSpec


class DirectResponse:
    """Sets flow.response to the configured status, body and content type."""

    Config = DirectResponseSpec

    def __init__(self, name: str, config: DirectResponseSpec) -> None:
        self.name = name
        self.config = config
        self._body = config.body.encode()

    def request(self, flow: HttpFlow) -> None:
        headers: CIMultiDict[str] = CIMultiDict({"Content-Type": self.config.content_type})
        flow.response = Response(self.config.status_code, headers, self._body)
