"""`wardgate-cluster init`: make a cluster home (PKI, keys, settings, store, root admin credential).

With `--store postgresql://...` the CA, signing key and cluster-wide settings go into the database too."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from wardgate.cluster import membership
from wardgate.cluster.config import Home
from wardgate.cluster.errors import Invalid
from wardgate.cluster.identity import credentials
from wardgate.cluster.identity.pki import make_ca, make_serving_cert
from wardgate.cluster.resources.credential import Credential
from wardgate.cluster.resources.kinds import AnyResource
from wardgate.cluster.resources.policy import Policy
from wardgate.cluster.resources.user import Group, User
from wardgate.cluster.store import Create
from wardgate.cluster.store.postgres import PostgresStore
from wardgate.cluster.store.sealing import Sealer
from wardgate.cluster.store.sqlite import SQLiteStore

ADMIN_USER = "root"
ADMIN_GROUP = "admins"
ADMIN_CREDENTIAL = "root-admin"
ADMIN_POLICY = "cluster-admins"

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def init_home(
    root: Path,
    domain: str,
    admin_listen: str = "127.0.0.1:9443",
    public_listen: str = "0.0.0.0:443",
    store: str | None = None,
    node_name: str | None = None,
) -> Home:
    """Create a new cluster home at `root` (which must be absent or empty). Returns the Home.

    With `store` (a postgresql:// URL) the cluster lives in that database: its CA, signing key and
    cluster-wide settings are stored there, sealed, and other nodes `join` it (membership.py)."""
    domain = domain.lower().rstrip(".")
    if not _DOMAIN.fullmatch(domain):
        raise Invalid(f"--domain {domain!r} is not a DNS name")
    local_settings = None if store is None else membership.node_settings(store, admin_listen, public_listen, node_name)
    if root.exists() and any(root.iterdir()):
        raise Invalid(f"{root} is not empty: a cluster home is initialised once")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    home = Home(root)
    make_ca(home.root, domain)
    make_serving_cert(home.root, domain)
    Sealer.generate(home.store_key)
    signing = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(home.signing_key, signing.decode())
    if local_settings is None:
        home.settings.write_text(
            f'domain = "{domain}"\n\n[admin]\nlisten = "{admin_listen}"\n\n[public]\nlisten = "{public_listen}"\n\n'
            '[store]\npath = "store.db"\n\n[log]\naccess_log = "access.log"\nstdout = true\n'
        )
    else:
        # The cluster's URL (issuer of every node's tokens) is cluster-wide: the first node's public port.
        port = int(public_listen.rpartition(":")[2])
        home.shared_settings.write_text(f'domain = "{domain}"\n\n[public]\nport = {port}\n')
        home.settings.write_text(local_settings)
    token = asyncio.run(_seed_store(home, store))
    _write_private(home.admin_token, token + "\n")
    _write_private(
        home.ctl_config,
        f'url = "https://{admin_listen}"\nca_file = "{home.ca_cert}"\ntoken_file = "{home.admin_token}"\n',
    )
    return home


async def _seed_store(home: Home, url: str | None) -> str:
    token, sha, prefix = credentials.generate(ADMIN_CREDENTIAL)
    seed: list[AnyResource] = [
        Policy.model_validate(
            {
                "kind": "Policy",
                "metadata": {"name": ADMIN_POLICY},
                "spec": {
                    "rules": [
                        {
                            "name": "admins-administer",
                            "effect": "ALLOW",
                            "condition": {"match": f'ctx.user.spec.groups.hasAny("{ADMIN_GROUP}")'},
                        }
                    ]
                },
            }
        ),
        Group.model_validate(
            {
                "kind": "Group",
                "metadata": {"name": ADMIN_GROUP},
                "spec": {"description": "cluster administrators"},
            }
        ),
        User.model_validate(
            {
                "kind": "User",
                "metadata": {"name": ADMIN_USER},
                "spec": {"type": "HUMAN", "groups": [ADMIN_GROUP]},
            }
        ),
        Credential.model_validate(
            {
                "kind": "Credential",
                "metadata": {"name": ADMIN_CREDENTIAL},
                "spec": {"type": "ACCESS_TOKEN", "user": ADMIN_USER},
                "status": {"tokenSha256": sha, "tokenPrefix": prefix},
            }
        ),
    ]
    sealer = Sealer.from_file(home.store_key)
    store: SQLiteStore | PostgresStore
    if url is None:
        store = SQLiteStore(home.path("store.db"), sealer)
    else:
        store = await PostgresStore.open(url, sealer)
        try:
            await membership.publish(store, home)
        except BaseException:
            await store.close()
            raise
    try:
        await store.commit([Create(r.with_metadata(managed_by="init")) for r in seed])
    finally:
        await store.close()
    return token
