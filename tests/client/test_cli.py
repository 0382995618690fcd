"""`wardgate`'s refusals: each error tells the user what to do (not root, no WireGuard, no cluster, revoked)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import RunningCluster, free_port
from tests.integration.gateway_env import create_credential
from wardgate.client import cli, tunnel


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config"


def as_root_with_wireguard_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(tunnel, "kernel_module_loaded", lambda: False)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")


def test_connect_needs_root(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["connect"]) == 1
    err = capsys.readouterr().err
    assert "must run as root" in err and "sudo wardgate connect" in err


def test_connect_needs_wireguard(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    as_root_with_wireguard_go(monkeypatch)
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert cli.main(["connect"]) == 1
    err = capsys.readouterr().err
    assert "wireguard-go is not installed" in err and "apt-get install wireguard-go" in err


def test_connect_needs_a_login(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    as_root_with_wireguard_go(monkeypatch)
    assert cli.main(["connect"]) == 1
    assert "not logged in: run `wardgate login --domain DOMAIN` first" in capsys.readouterr().err
    assert cli.main(["status"]) == 3


def test_unreachable_cluster_and_missing_ca(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    args = ["login", "--domain", "wardgate.test", "--auth-token", "wgt.a.b", "--address", f"127.0.0.1:{port}"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the cluster at https://wardgate.test:{port} (via 127.0.0.1)" in err
    assert "Check --domain and --address" in err
    assert cli.main([*args, "--ca", "/nonexistent/ca.crt"]) == 1
    assert "no such file" in capsys.readouterr().err


def test_revoked_session(
    cluster: RunningCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users.yaml"
    users.write_text(yaml.safe_dump({"kind": "User", "metadata": {"name": "alice"}, "spec": {"type": "HUMAN"}}))
    cluster.ctl("apply", "-f", str(users), check=True)
    token = create_credential(cluster, "alice-laptop", "alice", "auth-token")
    where = [
        "--domain",
        cluster.domain,
        "--ca",
        str(cluster.home / "ca.crt"),
        "--address",
        f"127.0.0.1:{cluster.public_port}",
    ]
    assert cli.main(["login", *where, "--auth-token", token + "x"]) == 1
    assert "login refused: the auth token is not valid" in capsys.readouterr().err
    assert cli.main(["login", *where, "--auth-token", token]) == 0
    out = capsys.readouterr().out
    assert "logged in to wardgate.test as alice" in out
    session = out.split("(session ")[1].split(",")[0]

    cluster.ctl("delete", "session", session, check=True)
    as_root_with_wireguard_go(monkeypatch)
    assert cli.main(["connect"]) == 3
    err = capsys.readouterr().err
    assert "your session was revoked or has expired" in err and "run `wardgate login` again" in err
    assert cli.main(["status"]) == 3
    assert "revoked" in capsys.readouterr().out
    assert cli.main(["logout"]) == 0
    assert "logged out" in capsys.readouterr().out
