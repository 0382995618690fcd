"""AdminApi: wardgatectl's client of the admin API over HTTPS (cluster CA), and where its settings come from."""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from wardgate.client.errors import ClientError


@dataclass(frozen=True, slots=True)
class Connection:
    url: str
    ca_file: str | None
    token: str


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "wardgate" / "wardgatectl.toml"


def resolve_connection(config: str | None, url: str | None, ca: str | None, token: str | None) -> Connection:
    """Flags win over environment variables, which win over the config file."""
    path = Path(config or os.environ.get("WARDGATE_CONFIG") or default_config_path())
    settings: dict[str, Any] = {}
    if path.exists():
        try:
            settings = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise ClientError(f"{path}: {exc}") from None
    elif config:
        raise ClientError(f"config file {path} not found")
    url = url or os.environ.get("WARDGATE_URL") or settings.get("url")
    ca = ca or os.environ.get("WARDGATE_CA") or settings.get("ca_file")
    token = token or os.environ.get("WARDGATE_TOKEN")
    if not token and settings.get("token_file"):
        try:
            token = Path(settings["token_file"]).read_text().strip()
        except OSError as exc:
            raise ClientError(f"cannot read the admin token: {exc}") from None
    if not url or not token:
        raise ClientError(
            f"no cluster configured: pass --config (or set WARDGATE_CONFIG) to the wardgatectl.toml that "
            f"`wardgate-cluster init` wrote, or set --url and WARDGATE_TOKEN (looked in {path})"
        )
    return Connection(url=url.rstrip("/"), ca_file=ca, token=token)


class AdminApi:
    """Async admin API client; use as `async with AdminApi(conn) as api:`."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        context = ssl.create_default_context(cafile=connection.ca_file)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context),
            headers={"Authorization": f"Bearer {connection.token}"},
            timeout=aiohttp.ClientTimeout(total=60, connect=10),
        )

    async def __aenter__(self) -> AdminApi:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        url = self._conn.url + path
        try:
            async with self._session.request(method, url, json=body, params=params) as response:
                try:
                    data = await response.json(content_type=None)
                except ValueError:
                    data = None
                if response.status >= 400:
                    error = (data or {}).get("error", {}) if isinstance(data, dict) else {}
                    message = error.get("message") or f"HTTP {response.status}"
                    raise ClientError(f"{message} (HTTP {response.status})", error.get("problems"))
                return data
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ClientError(f"TLS verification of {self._conn.url} failed ({exc}); check the CA file") from None
        except aiohttp.ClientConnectionError as exc:
            raise ClientError(f"cannot reach the cluster at {self._conn.url}: {exc}") from None
