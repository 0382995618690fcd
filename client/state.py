"""The client's files under the user's config dir, each written atomically and readable by its owner only.

    <config>/wardgate/login.json        the Session's tokens (from `wardgate login`)
    <config>/wardgate/connection.json   the running tunnel (pid, interface, addresses, resolver undo)
    <config>/wardgate/connect.log       what a `connect --detach` daemon printed

<config> is $XDG_CONFIG_HOME or ~/.config; under sudo, the invoking user's (files are given back to them),
so `sudo wardgate connect` finds the login a plain `wardgate login` stored. A file that others can read
is refused: it holds the refresh token.
"""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wardgate.client.errors import ClientError

M = TypeVar("M", bound=BaseModel)


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoginState(_State):
    """Who this client is: the cluster, how to reach it, and the Session's tokens."""

    domain: str
    address: str | None = None
    ca_file: str | None = None
    user: str
    session: str
    session_expires_at: datetime
    access_token: str = Field(repr=False)
    access_token_expires_at: datetime
    refresh_token: str = Field(repr=False)


class ResolverChange(_State):
    """What `connect` did to name resolution, so `disconnect` can undo exactly that."""

    kind: Literal["netns", "resolved", "resolv-conf", "off"]
    path: str | None = None
    previous: str | None = None
    """The file's content before (None: there was no file)."""
    written: str | None = None
    interface: str | None = None


class ConnectionState(_State):
    """A running tunnel, owned by process `pid`."""

    pid: int
    interface: str
    netns: str | None = None
    session: str
    tunnel_ipv4: str
    tunnel_ipv6: str
    node: str
    """The node the tunnel goes through now, and its WireGuard endpoint."""
    endpoint: str
    moved_from: str | None = None
    """The node the tunnel left when that one stopped answering (client/failover.py), and when."""
    moved_at: datetime | None = None
    gateway_ipv4: str
    gateway_ipv6: str
    dns_zone: str
    resolver: ResolverChange
    connected_at: datetime


def _invoking_user() -> pwd.struct_passwd | None:
    """The user behind sudo, if this is root running through sudo."""
    if os.geteuid() != 0 or "SUDO_UID" not in os.environ:
        return None
    try:
        return pwd.getpwuid(int(os.environ["SUDO_UID"]))
    except (KeyError, ValueError):
        return None


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    if base:
        return Path(base) / "wardgate"
    invoker = _invoking_user()
    home = Path(invoker.pw_dir) if invoker is not None else Path.home()
    return home / ".config" / "wardgate"


class StateFiles:
    """Reads and writes the client's files (see the module docstring)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else config_dir()
        self.login_path = self.directory / "login.json"
        self.connection_path = self.directory / "connection.json"
        self.log_path = self.directory / "connect.log"

    def read_login(self) -> LoginState | None:
        return self._read(self.login_path, LoginState)

    def write_login(self, state: LoginState) -> None:
        self._write(self.login_path, state.model_dump_json(indent=2))

    def read_connection(self) -> ConnectionState | None:
        return self._read(self.connection_path, ConnectionState)

    def write_connection(self, state: ConnectionState) -> None:
        self._write(self.connection_path, state.model_dump_json(indent=2))

    def delete_login(self) -> None:
        self.login_path.unlink(missing_ok=True)

    def delete_connection(self) -> None:
        self.connection_path.unlink(missing_ok=True)

    def open_log(self) -> int:
        """A file descriptor on connect.log (truncated, 0600) for a detached daemon's output."""
        self._ensure_directory()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._give_back(self.log_path)
        return fd

    def _read(self, path: Path, model: type[M]) -> M | None:
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        if info.st_mode & 0o077:
            raise ClientError(
                f"{path} is readable by other users (mode {stat.filemode(info.st_mode)}) but holds your session's "
                f"tokens: run `chmod 600 {path}` if nobody else could have read it, else `wardgate logout` and log in"
            )
        try:
            return model.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc}") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            problem = f"{where}: {first['msg']}" if where else first["msg"]
            raise ClientError(f"{path} is damaged ({problem}); delete it and run `wardgate login` again") from None

    def _ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.directory.chmod(0o700)
        self._give_back(self.directory)

    def _write(self, path: Path, text: str) -> None:
        self._ensure_directory()
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as file:
                file.write(text + "\n")
            self._give_back(Path(temporary))
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @staticmethod
    def _give_back(path: Path) -> None:
        """Under sudo, files in the user's own config dir stay theirs."""
        invoker = _invoking_user()
        if invoker is not None and os.environ.get("XDG_CONFIG_HOME") is None:
            os.chown(path, invoker.pw_uid, invoker.pw_gid)
