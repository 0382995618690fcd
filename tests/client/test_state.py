"""The client's files: 0600 in a 0700 directory, refused when others can read them, given back under sudo."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wardgate.client.errors import ClientError
from wardgate.client.state import ConnectionState, LoginState, ResolverChange, StateFiles, config_dir

LOGIN = LoginState(
    domain="wardgate.test",
    address="10.1.2.3:8443",
    ca_file="/etc/wardgate/ca.crt",
    user="alice",
    session="alice-0123",
    session_expires_at=datetime.now(UTC) + timedelta(hours=12),
    access_token="eyJ.secret.access",
    access_token_expires_at=datetime.now(UTC) + timedelta(hours=1),
    refresh_token="eyJ.secret.refresh",
)


def test_files_are_private_and_round_trip(tmp_path: Path) -> None:
    files = StateFiles(tmp_path / "wardgate")
    assert files.read_login() is None
    files.write_login(LOGIN)
    assert files.read_login() == LOGIN
    assert (files.login_path.stat().st_mode & 0o777, files.directory.stat().st_mode & 0o777) == (0o600, 0o700)
    assert "secret" not in repr(LOGIN)
    connection = ConnectionState(
        pid=os.getpid(),
        interface="wardgate",
        session="alice-0123",
        tunnel_ipv4="100.64.0.2",
        tunnel_ipv6="fd77::2",
        node="node-1",
        endpoint="10.1.2.3:51820",
        gateway_ipv4="100.64.0.1",
        gateway_ipv6="fd77::1",
        dns_zone="local.wardgate.test",
        resolver=ResolverChange(kind="off"),
        connected_at=datetime.now(UTC),
    )
    files.write_connection(connection)
    assert files.read_connection() == connection
    assert files.connection_path.stat().st_mode & 0o777 == 0o600
    os.close(files.open_log())
    assert files.log_path.stat().st_mode & 0o777 == 0o600
    files.delete_connection()
    files.delete_login()
    assert files.read_login() is None and files.read_connection() is None
    assert [p.name for p in files.directory.iterdir()] == ["connect.log"]  # no temporary files left


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    files = StateFiles(tmp_path)
    files.write_login(LOGIN)
    files.login_path.chmod(0o644)
    with pytest.raises(ClientError, match=r"readable by other users \(mode -rw-r--r--\).*chmod 600"):
        files.read_login()
    files.login_path.chmod(0o600)
    assert files.read_login() == LOGIN


def test_a_damaged_file_says_what_to_do(tmp_path: Path) -> None:
    files = StateFiles(tmp_path)
    files.write_login(LOGIN)
    files.login_path.write_text("{not json")
    with pytest.raises(ClientError, match=r"damaged \(Invalid JSON.*\); delete it and run `wardgate login` again"):
        files.read_login()


def test_config_dir_is_xdg_or_the_sudo_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_dir() == tmp_path / "xdg" / "wardgate"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    monkeypatch.delenv("SUDO_UID", raising=False)
    assert config_dir() == tmp_path / "me" / ".config" / "wardgate"

    home = tmp_path / "someone"
    monkeypatch.setenv("SUDO_UID", "4242")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr("pwd.getpwuid", lambda uid: type("P", (), {"pw_dir": str(home), "pw_uid": uid, "pw_gid": 77}))
    owners: list[tuple[str, int, int]] = []
    monkeypatch.setattr(os, "chown", lambda path, uid, gid: owners.append((Path(path).name, uid, gid)))
    assert config_dir() == home / ".config" / "wardgate"
    files = StateFiles()
    files.write_login(LOGIN)
    assert ("wardgate", 4242, 77) in owners and any(name.startswith(".login.json") for name, *_ in owners)
