"""Shared fixtures: a clean environment, free loopback ports, and a real cluster process."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.postgres_server import PostgresServer

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WARDGATE_"):
            monkeypatch.delenv(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RunningCluster:
    home: Path
    url: str
    domain: str
    process: subprocess.Popen[bytes]
    log_path: Path
    public_port: int

    def public_url(self, service: str | None = None) -> str:
        host = f"{service}.{self.domain}" if service else self.domain
        return f"https://{host}:{self.public_port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "WARDGATE_CONFIG": str(self.home / "wardgatectl.toml")}

    @property
    def token(self) -> str:
        return (self.home / "admin.token").read_text().strip()

    def ctl(
        self, *args: str, check: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "wardgatectl"), *args], env=env or self.env, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(f"wardgatectl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.home / "ca.crt"))

    def access_log(self) -> list[str]:
        path = self.home / "access.log"
        return path.read_text().splitlines() if path.exists() else []


def start_cluster(
    home: Path, domain: str = "wardgate.test", extra_settings: str = "", workers: int = 1
) -> RunningCluster:
    """Init and run a cluster; `extra_settings` (TOML tables) is appended to cluster.toml before it starts."""
    port = free_port()
    public_port = free_port()
    subprocess.run(
        [
            str(BIN / "wardgate-cluster"),
            "init",
            "--home",
            str(home),
            "--domain",
            domain,
            "--admin-listen",
            f"127.0.0.1:{port}",
            "--public-listen",
            f"127.0.0.1:{public_port}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    if extra_settings:
        settings = home / "cluster.toml"
        settings.write_text(settings.read_text() + "\n" + extra_settings)
    log_path = home.parent / f"{home.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "wardgate-cluster"), "run", "--home", str(home), "--workers", str(workers)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"https://127.0.0.1:{port}"
    context = ssl.create_default_context(cafile=str(home / "ca.crt"))
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", context=context, timeout=1)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError("cluster did not start:\n" + log_path.read_text()) from None
            time.sleep(0.05)
    return RunningCluster(home, url, domain, process, log_path, public_port)


def stop_cluster(cluster: RunningCluster) -> None:
    cluster.process.terminate()
    try:
        cluster.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        cluster.process.kill()
        cluster.process.wait()


TEST_DOMAIN_SUFFIXES = (".wardgate.test", "wardgate.test")


@pytest.fixture
def loopback_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve `*.wardgate.test` to 127.0.0.1 in this process (real TLS, SNI and Host still use the name)."""
    original = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, bytes):
            host = host.decode()
        if isinstance(host, str) and host.endswith(TEST_DOMAIN_SUFFIXES):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RunningCluster]:
    running = start_cluster(tmp_path / "home")
    try:
        yield running
    finally:
        stop_cluster(running)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; each test takes its own database (`create_database()`)."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
