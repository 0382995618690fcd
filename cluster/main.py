"""`wardgate-cluster`: the composition root. `init` makes a cluster home; `run` serves it.

run:  home/cluster.toml ─▶ SQLiteStore ─▶ ResourceCache (snapshot, then the change feed)
      ─▶ admin API (HTTPS, the cluster certificate) reading the cache for authentication
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from cluster.api.app import make_admin_app
from cluster.bootstrap import init_home
from cluster.config import Home
from cluster.errors import WardgateError
from cluster.observability.accesslog import AccessLog
from cluster.policy import cel
from cluster.store.cache import ResourceCache
from cluster.store.sealing import Sealer
from cluster.store.sqlite import SQLiteStore

log = logging.getLogger("wardgate.cluster")


def check_expression(source: str) -> str | None:
    try:
        cel.check(source)
    except cel.CelCompileError as exc:
        return str(exc)
    return None


def server_ssl_context(home: Home) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(home.tls_cert, home.tls_key)
    return context


async def serve(home: Home, ready: asyncio.Event | None = None) -> None:
    settings = home.load()
    store = SQLiteStore(home.path(settings.store.path), Sealer.from_file(home.store_key))
    cache = ResourceCache(store)
    await cache.load()
    access_log = AccessLog(home.path(settings.log.access_log), stdout=settings.log.stdout)
    app = make_admin_app(store, cache, access_log, check_expression, node=socket.gethostname())
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, _, port = settings.admin.listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=server_ssl_context(home))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            follower = tasks.create_task(cache.follow())
            await site.start()
            log.info("admin API on https://%s (domain %s)", settings.admin.listen, settings.domain)
            if ready is not None:
                ready.set()
            await stop.wait()
            follower.cancel()
    finally:
        await runner.cleanup()
        await store.close()
        access_log.close()


def _run(args: argparse.Namespace) -> int:
    home = Home(Path(args.home))
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(home))
    return 0


def _init(args: argparse.Namespace) -> int:
    home = init_home(Path(args.home), args.domain, args.admin_listen)
    print(f"initialised cluster home {home.root} for *.{args.domain}")
    print(f"  CA certificate:      {home.ca_cert}")
    print(f"  root admin token:    {home.admin_token} (0600)")
    print(f"  wardgatectl config:  {home.ctl_config}  (export WARDGATE_CONFIG={home.ctl_config})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wardgate-cluster", description="Wardgate cluster node")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create a cluster home (CA, certificates, keys, admin credential)")
    p_init.add_argument("--home", required=True)
    p_init.add_argument("--domain", required=True)
    p_init.add_argument("--admin-listen", default="127.0.0.1:9443", help="HOST:PORT of the admin API")
    p_init.set_defaults(func=_init)
    p_run = sub.add_parser("run", help="serve a cluster home")
    p_run.add_argument("--home", required=True)
    p_run.set_defaults(func=_run)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
        return code
    except (WardgateError, OSError) as exc:
        print(f"wardgate-cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
