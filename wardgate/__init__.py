"""Wardgate: one namespace for what is installed. The repository keeps `agent/`, `cluster/` and `client/` at its
root; `wardgate/agent`, `wardgate/cluster` and `wardgate/client` are links to them, so the source tree and an
installed wheel both import `wardgate.cluster...` and nothing generic lands at the top level of site-packages."""

__version__ = "0.1.0"
