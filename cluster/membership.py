"""Several nodes, one cluster: the files a PostgreSQL cluster keeps in its database, and the store a node opens.

    init --store URL ─▶ the CA, the token signing key and the cluster-wide settings go into `wardgate_cluster`,
                        sealed with the store key (bootstrap.py makes them, `publish` stores them)
    join --store URL --store-key-file F ─▶ a new home: the key, this node's own cluster.toml (listeners, store,
                        name), the cluster's files fetched (`sync`), a serving certificate from the cluster's CA
    run ─▶ `sync` again (the database is the truth; the home keeps 0600 copies for TLS and the token key)
        ─▶ `open_store`: SQLiteStore for `[store] path`, PostgresStore for `[store] url`
"""

from __future__ import annotations

import asyncio
import os
import tomllib
from pathlib import Path

from wardgate.cluster.config import ClusterSettings, Home
from wardgate.cluster.errors import Invalid
from wardgate.cluster.identity.pki import make_serving_cert
from wardgate.cluster.store.postgres import PostgresStore, is_postgres_url
from wardgate.cluster.store.sealing import Sealer
from wardgate.cluster.store.sqlite import SQLiteStore

SHARED_FILES = ("ca.crt", "ca.key", "signing.key", "cluster.shared.toml")
"""Home files every node of a PostgreSQL cluster shares (the names are the home's)."""


def store_url(home: Home) -> str | None:
    """`[store] url` of this node's own cluster.toml (read before the shared settings exist)."""
    try:
        raw = tomllib.loads(home.settings.read_text())
    except FileNotFoundError:
        raise Invalid(f"{home.settings} not found: run `wardgate-cluster init` or `join`") from None
    except tomllib.TOMLDecodeError as exc:
        raise Invalid(f"{home.settings}: {exc}") from None
    store = raw.get("store", {})
    url = store.get("url") if isinstance(store, dict) else None
    return url if isinstance(url, str) else None


async def open_store(home: Home, settings: ClusterSettings) -> SQLiteStore | PostgresStore:
    sealer = Sealer.from_file(home.store_key)
    if settings.store.url is not None:
        return await PostgresStore.open(settings.store.url, sealer)
    return SQLiteStore(home.path(settings.store.path), sealer)


async def publish(store: PostgresStore, home: Home) -> None:
    """Put the first node's shared files into the database (once: a second init on it is refused)."""
    await store.put_cluster_files({name: home.path(name).read_bytes() for name in SHARED_FILES})


def _replace_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


async def _fetch(url: str, key: Path) -> dict[str, bytes]:
    store = await PostgresStore.open(url, Sealer.from_file(key))
    try:
        files = await store.cluster_files()
    finally:
        await store.close()
    missing = sorted(set(SHARED_FILES) - set(files))
    if missing:
        raise Invalid(f"the cluster in {store.where} lacks {', '.join(missing)}: was it made by `init --store`?")
    return files


def sync(home: Home) -> bool:
    """Write the cluster's files from the database into `home`; False (nothing to do) for a SQLite home.
    Call it outside an event loop (before the node serves)."""
    url = store_url(home)
    if url is None:
        return False
    files = asyncio.run(_fetch(url, home.store_key))
    for name in SHARED_FILES:
        _replace_private(home.path(name), files[name])
    home.ca_cert.chmod(0o644)
    return True


def node_settings(store: str, admin_listen: str, public_listen: str, node_name: str | None) -> str:
    """This node's own cluster.toml in a PostgreSQL cluster (the rest comes from cluster.shared.toml)."""
    if not is_postgres_url(store):
        raise Invalid(f"--store {store!r} is not a postgresql:// URL")
    name = f'[node]\nname = "{node_name}"\n\n' if node_name else ""
    return (
        f'{name}[admin]\nlisten = "{admin_listen}"\n\n[public]\nlisten = "{public_listen}"\n\n'
        f'[store]\nurl = "{store}"\n\n[log]\naccess_log = "access.log"\nstdout = true\n'
    )


def join_home(
    root: Path,
    store: str,
    key_file: Path,
    admin_listen: str = "127.0.0.1:9443",
    public_listen: str = "0.0.0.0:443",
    node_name: str | None = None,
) -> Home:
    """Make a home at `root` (absent or empty) for another node of the cluster in the database at `store`."""
    settings = node_settings(store, admin_listen, public_listen, node_name)
    try:
        key = key_file.read_bytes()
    except OSError as exc:
        raise Invalid(f"--store-key-file {key_file}: {exc.strerror}") from None
    if len(key) != 32:
        raise Invalid(f"--store-key-file {key_file}: not a store key (32 bytes, the first node's store.key)")
    if root.exists() and any(root.iterdir()):
        raise Invalid(f"{root} is not empty: a node's home is made once")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    home = Home(root)
    _replace_private(home.store_key, key)
    home.settings.write_text(settings)
    sync(home)
    cluster = home.load()
    make_serving_cert(home.root, cluster.domain)
    home.ctl_config.write_text(
        f'url = "https://{admin_listen}"\nca_file = "{home.ca_cert}"\ntoken_file = "{home.admin_token}"\n'
    )
    return home
