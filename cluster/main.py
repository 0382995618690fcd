"""`wardgate-cluster`: the composition root. `init` makes a cluster home; `run` serves it.

run:  home/cluster.toml ─▶ SQLiteStore ─▶ ResourceCache (snapshot, then the change feed)
      ─▶ GatewayState (compiled from the cache, rebuilt lazily after a change)
      ─▶ public HTTPS listener: <service>.<domain> ─▶ proxy.Gateway;  <domain> ─▶ api.oauth (token, JWKS)
      ─▶ admin API (HTTPS, its own port); /agent/v1 for node agents (api.agent)
      ─▶ tunnel listener: <service>.<zone> over WireGuard ─▶ proxy.tunnel.TunnelGateway (identity = source address)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path

import aiohttp
import uvloop

from wardgate import __version__
from wardgate.cluster.api import health
from wardgate.cluster.api import usage as usage_api
from wardgate.cluster.api.agent import AgentApi
from wardgate.cluster.api.app import make_admin_app, malformed_requests
from wardgate.cluster.api.authorization import AuthorizationEndpoint
from wardgate.cluster.api.console import Console
from wardgate.cluster.api.health import Readiness
from wardgate.cluster.api.login import BrowserLogin
from wardgate.cluster.api.oauth import TokenEndpoint
from wardgate.cluster.api.site import SiteApp, make_site_app
from wardgate.cluster.api.user import ClientAccess
from wardgate.cluster.authorize.holder import StateHolder
from wardgate.cluster.authorize.offpath import AdminAccess, PolicyEvaluation
from wardgate.cluster.bootstrap import init_home
from wardgate.cluster.config import Home, base_url
from wardgate.cluster.errors import WardgateError
from wardgate.cluster.identity.addresses import AddressAllocator
from wardgate.cluster.identity.authenticate import Authenticator
from wardgate.cluster.identity.janitor import expire_sessions
from wardgate.cluster.identity.oidc import OidcClient
from wardgate.cluster.identity.sealed import SealedValues
from wardgate.cluster.identity.sessions import SessionService
from wardgate.cluster.identity.tokens import SigningKey, TokenService
from wardgate.cluster.membership import join_home, open_store, sync
from wardgate.cluster.observability.accesslog import AccessLog
from wardgate.cluster.observability.metrics import Metrics, fresh_directory, share_between_workers
from wardgate.cluster.observability.otlp import Exporter
from wardgate.cluster.policy import cel, rego
from wardgate.cluster.proxy.assertion import AssertionSigner
from wardgate.cluster.proxy.balancer import Balancer
from wardgate.cluster.proxy.connections import ConnectionGuard
from wardgate.cluster.proxy.listener import ListenerAppRunner, ListenerServer
from wardgate.cluster.proxy.revocation import LiveConnections
from wardgate.cluster.proxy.server import Gateway, Listener, Telemetry, bearer_or_cookie
from wardgate.cluster.proxy.upstream import Upstream
from wardgate.cluster.store.cache import ResourceCache
from wardgate.cluster.store.workers import NUDGE, BoardPropagation, WorkerBoard
from wardgate.cluster.wiring import (
    board_path,
    metrics_path,
    session_counts,
    tunnel_listener,
    usage_meter,
    wireguard_metrics,
)

log = logging.getLogger("wardgate.cluster")


def check_expression(language: str, source: str) -> str | None:
    try:
        if language == "rego":
            rego.check(source)
        else:
            cel.check(source)
    except (cel.CelCompileError, rego.RegoCompileError) as exc:
        return str(exc)
    return None


def server_ssl_context(home: Home) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(home.tls_cert, home.tls_key)
    return context


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(home: Home, ready: asyncio.Event | None = None, slot: int = 0, workers: int = 1) -> None:
    """Serve until SIGINT/SIGTERM. Every worker serves the public listener (SO_REUSEPORT); only the
    primary (slot 0) also serves the admin API and runs the session janitor. Every worker claims a slot on
    the worker board before it loads, so a write waits for all of them (store/workers.py)."""
    primary = slot == 0
    settings = home.load()
    node = settings.node.name or socket.gethostname()
    # `run` makes the board before it spawns the other workers; a lone serve() makes its own.
    path = board_path(home)
    board = WorkerBoard(path, slot) if workers > 1 or slot > 0 else WorkerBoard.create(path, 1)
    board.claim()
    propagation = BoardPropagation(board)
    store = await open_store(home, settings)
    cache = ResourceCache(store)
    await cache.load()
    access_log = AccessLog(home.path(settings.log.access_log), stdout=settings.log.stdout)
    wireguard_peers: list[AgentApi] = []
    balancer = Balancer()
    shared_metrics = metrics_path(home) if workers > 1 else None
    if shared_metrics is not None:
        share_between_workers(shared_metrics)
    metrics = Metrics(
        endpoints=balancer.snapshot,
        sessions=lambda: session_counts(cache),
        wireguard=lambda: wireguard_metrics(wireguard_peers[0]) if wireguard_peers else {},
        node=node,
        shared=shared_metrics,
    )
    exporter = Exporter(settings.telemetry, node, on_drop=metrics.drop)
    exporter.start()
    tokens = TokenService(SigningKey.from_file(home.signing_key), base_url(settings))
    authenticator = Authenticator(cache, tokens)
    compiler = cel.Compiler()
    state = StateHolder(cache, compiler, settings.admin.policies)
    state.add_listener(board.publish)
    meter = await usage_meter(home, settings, metrics)
    tls = server_ssl_context(home)

    admin_app = make_admin_app(
        store,
        cache,
        propagation,
        authenticator,
        AdminAccess(state, settings.domain),
        PolicyEvaluation(state, settings.domain),
        access_log,
        check_expression,
        node,
        metrics,
    )
    agents = AgentApi(cache, settings.tunnel, settings.domain)
    agents.install(admin_app)
    readiness = Readiness()
    health.install(admin_app, readiness)
    assert meter.ledger is not None
    usage_api.install(admin_app, meter.ledger, meter, state)
    wireguard_peers.append(agents)
    limits = settings.limits
    admin_runner = ListenerAppRunner(
        admin_app,
        malformed=malformed_requests(admin_app),
        access_log=None,
        handle_signals=False,
        **limits.server_options(),
    )
    await admin_runner.setup()
    assert admin_runner.server is not None
    admin_guard = ConnectionGuard(admin_runner.server, limits, name="admin", cap=False)

    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    sessions = SessionService(store, cache, propagation)
    # Values handed to clients and read back by any worker of any node are sealed with keys derived from the
    # store key, which every node of the cluster holds (membership.py copies it on `join`).
    cluster_key = home.store_key.read_bytes()
    mcp_sessions = SealedValues(cluster_key, "mcp session")
    login = BrowserLogin(
        domain=settings.domain,
        base_url=base_url(settings),
        cache=cache,
        authenticator=authenticator,
        tokens=tokens,
        sessions=sessions,
        oidc=OidcClient(client),
        pending=SealedValues(cluster_key, "browser login"),
    )
    client_access = ClientAccess(
        domain=settings.domain,
        cache=cache,
        authenticator=authenticator,
        tokens=tokens,
        refresh_tokens=TokenService(SigningKey.from_file(home.signing_key), base_url(settings) + "/v1/client/refresh"),
        sessions=sessions,
        allocator=AddressAllocator(store, cache, propagation, settings.tunnel),
        settings=settings.tunnel,
        node=node,
    )
    token_endpoint = TokenEndpoint(
        domain=settings.domain,
        base_url=base_url(settings),
        cache=cache,
        store=store,
        tokens=tokens,
        sessions=sessions,
        registration=settings.oauth.registration,
    )
    authorization = AuthorizationEndpoint(
        domain=settings.domain,
        base_url=base_url(settings),
        issuer=tokens.issuer,
        cache=cache,
        store=store,
        propagation=propagation,
        authenticator=authenticator,
        login=login,
        registration=settings.oauth.registration,
    )
    console = Console(
        domain=settings.domain,
        base_url=base_url(settings),
        public_port=settings.public.external_port(),
        tunnel_zone=settings.tunnel.network(settings.domain).dns_zone,
        tunnel_port=settings.tunnel.http_port,
        cache=cache,
        authenticator=authenticator,
        state=state,
        admin=AdminAccess(state, settings.domain),
        sessions=sessions,
        ledger=meter.ledger,
        meter=meter,
        access_log=home.path(settings.log.access_log),
        node_status=agents.wireguard_status,
    )
    site = await SiteApp.start(
        make_site_app(
            domain=settings.domain,
            node=node,
            access_log=access_log,
            endpoints=[token_endpoint, authorization, login, client_access, console],
        )
    )
    telemetry = Telemetry(metrics, exporter)
    # Revocation ends this worker's open connections of the revoked identity (each worker follows the feed).
    live = LiveConnections()
    live.follow(cache)
    assertions = AssertionSigner(tokens.key, base_url(settings))
    upstreams = (Upstream(client, "https", assertions, balancer), Upstream(client, "http", assertions, balancer))
    gateway = Gateway(
        domain=settings.domain,
        listener=Listener("public", "https", True, bearer_or_cookie(authenticator), login.login_url),
        state=state,
        upstream=upstreams[0],
        access_log=access_log,
        site=site,
        node=node,
        telemetry=telemetry,
        live=live,
        meter=meter,
        mcp_sessions=mcp_sessions,
    )
    public_server = ListenerServer(
        gateway.handle,
        malformed=gateway.malformed,
        handler_cancellation=True,
        access_log=None,
        **limits.server_options(),
    )
    public_guard = ConnectionGuard(public_server, limits, name="public", cap=True, on_close=live.forget)
    tunnel = tunnel_listener(
        settings.tunnel,
        settings.domain,
        cache,
        state,
        access_log,
        upstreams[1],
        node,
        telemetry,
        limits,
        live,
        meter,
        mcp_sessions,
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(NUDGE, store.poke)
    public_host, public_port = _host_port(settings.public.listen)
    listener = await loop.create_server(
        public_guard, public_host, public_port, ssl=tls, backlog=1024, reuse_port=True, **limits.tls_options()
    )
    admin_listener: asyncio.Server | None = None

    # Startup objects (compiled state, modules) never die: freeze them out of the collector's scans, and
    # collect young objects less often (profiling showed ~7 % of request CPU in the collector).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            follower = tasks.create_task(cache.follow())
            rebuilder = tasks.create_task(state.rebuild_forever())
            metering = tasks.create_task(meter.run())
            janitor = tasks.create_task(expire_sessions(store, cache)) if primary else None
            tunnel_task = tasks.create_task(tunnel.run()) if tunnel is not None else None
            if primary:
                admin_listener = await loop.create_server(
                    admin_guard, *_host_port(settings.admin.listen), ssl=tls, backlog=128, **limits.tls_options()
                )
            log.info(
                "admin API on https://%s; public listener on %s for *.%s (%s)",
                settings.admin.listen,
                settings.public.listen,
                settings.domain,
                base_url(settings),
            )
            readiness.listeners_up = True
            if ready is not None:
                ready.set()
            await stop.wait()
            follower.cancel()
            rebuilder.cancel()
            metering.cancel()
            if janitor is not None:
                janitor.cancel()
            if tunnel_task is not None:
                tunnel_task.cancel()
    finally:
        listener.close()
        await public_server.shutdown(5)
        await listener.wait_closed()
        if tunnel is not None:
            await tunnel.shutdown()
        if admin_listener is not None:
            admin_listener.close()
        await admin_runner.cleanup()
        await site.aclose()
        await client.close()
        for upstream in upstreams:
            upstream.pool.close()
        await state.plugins.aclose()
        await meter.counters.close()
        if meter.ledger is not None:
            await meter.ledger.close()
        await store.close()
        await asyncio.to_thread(exporter.close)
        access_log.close()
        board.close()


def _run(args: argparse.Namespace) -> int:
    """`--workers N`: this process is the primary; N-1 more processes serve the public listener beside
    it, each with its own cache following the shared store."""
    home = Home(Path(args.home))
    warnings.filterwarnings("ignore", message="Sending a large body directly with raw bytes", category=ResourceWarning)
    children: list[subprocess.Popen[bytes]] = []
    if args.slot == 0 and sync(home):
        log.info("cluster files and settings fetched from the PostgreSQL store")
    if args.workers > 1 and args.slot == 0:
        # The board must exist before a secondary maps it: the primary makes it before spawning.
        WorkerBoard.create(board_path(home), args.workers).close()
        fresh_directory(metrics_path(home))
        command = [
            sys.executable,
            "-m",
            "wardgate.cluster",
            "run",
            "--home",
            str(home.root),
            "--workers",
            str(args.workers),
        ]
        children = [subprocess.Popen([*command, "--slot", str(slot)]) for slot in range(1, args.workers)]
    try:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve(home, slot=args.slot, workers=args.workers))
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


def _init(args: argparse.Namespace) -> int:
    home = init_home(Path(args.home), args.domain, args.admin_listen, args.public_listen, args.store, args.node_name)
    print(f"initialised cluster home {home.root} for *.{args.domain}")
    print(f"  CA certificate:      {home.ca_cert}")
    print(f"  root admin token:    {home.admin_token} (0600)")
    print(f"  wardgatectl config:  {home.ctl_config}  (export WARDGATE_CONFIG={home.ctl_config})")
    return 0


def _join(args: argparse.Namespace) -> int:
    home = join_home(
        Path(args.home), args.store, Path(args.store_key_file), args.admin_listen, args.public_listen, args.node_name
    )
    print(f"node home {home.root} joined the cluster of *.{home.load().domain}")
    print(f"  CA certificate:      {home.ca_cert}")
    print(f"  wardgatectl config:  {home.ctl_config} (copy an admin token to {home.admin_token})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wardgate-cluster", description="Wardgate cluster node")
    parser.add_argument("--version", action="version", version=f"wardgate-cluster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create a cluster home (CA, certificates, keys, admin credential)")
    p_init.add_argument("--home", required=True)
    p_init.add_argument("--domain", required=True)
    p_init.add_argument("--admin-listen", default="127.0.0.1:9443", help="HOST:PORT of the admin API")
    p_init.add_argument("--public-listen", default="0.0.0.0:443", help="HOST:PORT of the public HTTPS listener")
    p_init.add_argument("--store", help="postgresql://... : keep the cluster in that database, so other nodes can join")
    p_init.add_argument("--node-name", help="this node's name in logs and metrics (default: the host name)")
    p_init.set_defaults(func=_init)
    p_join = sub.add_parser("join", help="make a home for another node of a cluster kept in PostgreSQL")
    p_join.add_argument("--home", required=True)
    p_join.add_argument("--store", required=True, help="the cluster's postgresql://... URL")
    p_join.add_argument("--store-key-file", required=True, help="a copy of the first node's store.key")
    p_join.add_argument("--admin-listen", default="127.0.0.1:9443", help="HOST:PORT of the admin API")
    p_join.add_argument("--public-listen", default="0.0.0.0:443", help="HOST:PORT of the public HTTPS listener")
    p_join.add_argument("--node-name", help="this node's name in logs and metrics (default: the host name)")
    p_join.set_defaults(func=_join)
    p_run = sub.add_parser("run", help="serve a cluster home")
    p_run.add_argument("--home", required=True)
    p_run.add_argument("--workers", type=int, default=1, help="processes serving the public listener")
    p_run.add_argument("--slot", type=int, default=0, help=argparse.SUPPRESS)
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
