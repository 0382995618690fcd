"""`wardgate`: the user's client. Parse, call, print; the work is in auth, tunnel and resolver.

wardgate login --domain D [--auth-token T] [--ca FILE] [--address HOST[:PORT]]
wardgate connect [--detach] [--interface NAME] [--dns auto|netns|resolved|resolv-conf|off]
wardgate status | disconnect | logout
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from wardgate import __version__
from wardgate.agent.wg import WireGuardError
from wardgate.client import resolver, tunnel
from wardgate.client.auth import login, not_logged_in, refresh_if_due, signed_in
from wardgate.client.errors import ClientError
from wardgate.client.state import ConnectionState, LoginState, StateFiles
from wardgate.client.user_api import SessionEnded

DEFAULT_INTERFACE = "wardgate"
DETACH_TIMEOUT = 30.0


def _ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    return f"{seconds} s ago" if seconds < 120 else f"{seconds // 60} min ago"


def _until(when: datetime) -> str:
    seconds = int((when - datetime.now(UTC)).total_seconds())
    if seconds <= 0:
        return "expired"
    hours, minutes = divmod(seconds // 60, 60)
    return f"in {hours} h {minutes} min" if hours else f"in {minutes} min {seconds % 60} s"


def _bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    size = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"


def _print_connected(connection: ConnectionState, detached: bool) -> None:
    print(f"connected: {connection.tunnel_ipv4}, {connection.tunnel_ipv6} on {connection.interface}")
    names = f"*.{connection.dns_zone} ({connection.resolver.kind})"
    print(f"  node {connection.node} at {connection.endpoint}; names {names}")
    if detached:
        print(f"  running in the background (pid {connection.pid}); `wardgate disconnect` ends it")
    else:
        print("  Ctrl-C or `wardgate disconnect` ends it", flush=True)


def cmd_login(files: StateFiles, args: argparse.Namespace) -> int:
    token = args.auth_token or os.environ.get("WARDGATE_AUTH_TOKEN")
    if not token:
        if not sys.stdin.isatty():
            raise ClientError("no auth token: pass --auth-token or set WARDGATE_AUTH_TOKEN")
        token = getpass.getpass("auth token: ").strip()
    ca = str(Path(args.ca).resolve()) if args.ca else None
    if ca is not None and not Path(ca).is_file():
        raise ClientError(f"--ca {args.ca}: no such file (ask your administrator for the cluster's ca.crt)")
    domain = args.domain.lower().rstrip(".")
    previous = files.read_login()
    if previous is not None:
        connection = files.read_connection()
        if connection is not None and tunnel.pid_alive(connection.pid):
            raise ClientError("connected with the current session: `wardgate disconnect` before logging in again")
        with contextlib.suppress(ClientError):  # the old session ends now, not at its expiry
            asyncio.run(_tell_cluster(files, logout=True))
    state = asyncio.run(login(files, domain, token, args.address, ca))
    expires = _until(state.session_expires_at)
    print(f"logged in to {domain} as {state.user} (session {state.session}, expires {expires})")
    print(f"  saved in {files.login_path}; now run `sudo wardgate connect`")
    return 0


async def _connect(files: StateFiles, args: argparse.Namespace) -> int:
    await tunnel.clear_previous(files)
    async with signed_in(files) as (api, state):

        async def refresh(current: LoginState) -> LoginState:
            return await refresh_if_due(api, files, current)

        return await tunnel.connect(
            files, api, state, refresh, args.interface, args.dns, lambda c: _print_connected(c, detached=False)
        )


def cmd_connect(files: StateFiles, args: argparse.Namespace) -> int:
    tunnel.preflight()
    if files.read_login() is None:
        raise not_logged_in()
    if args.detach:
        return _detach(files, args)
    try:
        return asyncio.run(_connect(files, args))
    except WireGuardError as exc:
        raise ClientError(str(exc)) from None


def _detach(files: StateFiles, args: argparse.Namespace) -> int:
    """Start `connect` as a daemon (its own session, output to connect.log) and wait until it is up."""
    existing = files.read_connection()
    if existing is not None and tunnel.pid_alive(existing.pid):
        raise ClientError(f"already connected (pid {existing.pid}): `wardgate disconnect` first")
    log = files.open_log()
    command = [sys.executable, "-m", "wardgate.client", "connect", "--interface", args.interface, "--dns", args.dns]
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    finally:
        os.close(log)
    deadline = time.monotonic() + DETACH_TIMEOUT
    while time.monotonic() < deadline:
        connection = files.read_connection()
        if connection is not None and connection.pid == child.pid:
            _print_connected(connection, detached=True)
            return 0
        if child.poll() is not None:
            output = files.log_path.read_text().strip()
            print(output or f"wardgate: connect exited with {child.returncode}", file=sys.stderr)
            return child.returncode or 1
        time.sleep(0.05)
    child.terminate()
    raise ClientError(f"connect did not come up within {DETACH_TIMEOUT:.0f} s; see {files.log_path}")


async def _status(files: StateFiles, connection: ConnectionState | None, verbose: list[str]) -> None:
    if connection is not None:
        try:
            state = await tunnel.attach(connection.interface).state()
        except WireGuardError as exc:
            verbose.append(f"  tunnel: cannot read {connection.interface} ({exc})")
        else:
            for peer in state.peers:
                verbose.append(
                    f"  node: last handshake {_ago(peer.last_handshake)}, "
                    f"received {_bytes(peer.rx_bytes)}, sent {_bytes(peer.tx_bytes)}"
                )
    try:
        async with signed_in(files) as (api, _):
            services = await api.services()
    except SessionEnded as exc:
        verbose.append(f"  session: {exc}")
        return
    except ClientError as exc:
        verbose.append(f"  services: unknown ({exc})")
        return
    verbose.append("  services:" if services.services else "  services: none")
    width = max((len(s.name) for s in services.services), default=0)
    verbose.extend(f"    {s.name.ljust(width)}  {s.url}" for s in services.services)


def cmd_status(files: StateFiles, args: argparse.Namespace) -> int:
    state = files.read_login()
    if state is None:
        print("not logged in")
        return 3
    connection = files.read_connection()
    if connection is not None and not tunnel.pid_alive(connection.pid):
        print(f"not connected (a connect that ended uncleanly left {connection.interface}; `wardgate disconnect`)")
        connection = None
    expires = _until(state.session_expires_at)
    print(f"logged in to {state.domain} as {state.user}; session {state.session} expires {expires}")
    if connection is None:
        print("not connected")
    else:
        print(
            f"connected since {_ago(connection.connected_at)}: {connection.tunnel_ipv4}, {connection.tunnel_ipv6} "
            f"on {connection.interface} (pid {connection.pid}); node {connection.node} at {connection.endpoint}"
        )
        if connection.moved_from is not None:
            print(f"  moved from node {connection.moved_from} {_ago(connection.moved_at)} (it stopped answering)")
    lines: list[str] = []
    asyncio.run(_status(files, connection, lines))
    for line in lines:
        print(line)
    return 0 if connection is not None else 3


def _disconnect(files: StateFiles) -> bool:
    """End the running connect (or clean up after a dead one); False if there was nothing to end."""
    connection = files.read_connection()
    if connection is None:
        return False
    if tunnel.pid_alive(connection.pid):
        os.kill(connection.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while tunnel.pid_alive(connection.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if tunnel.pid_alive(connection.pid):
            raise ClientError(f"connect (pid {connection.pid}) did not stop within 15 s")
        if files.read_connection() is None:
            return True
    here = resolver.current_netns()
    if connection.netns != here:
        where = f"`ip netns exec {connection.netns} wardgate disconnect`" if connection.netns else "the host namespace"
        raise ClientError(f"the tunnel was made in another network namespace: run {where}")
    for warning in asyncio.run(tunnel.cleanup(files, connection)):
        print(f"wardgate: {warning}", file=sys.stderr)
    return True


async def _tell_cluster(files: StateFiles, logout: bool) -> None:
    try:
        async with signed_in(files) as (api, _):
            await (api.logout() if logout else api.disconnect())
    except SessionEnded:
        pass


def cmd_disconnect(files: StateFiles, args: argparse.Namespace) -> int:
    if not _disconnect(files):
        print("not connected")
        return 0
    if files.read_login() is not None:
        asyncio.run(_tell_cluster(files, logout=False))
    print("disconnected")
    return 0


def cmd_logout(files: StateFiles, args: argparse.Namespace) -> int:
    _disconnect(files)
    if files.read_login() is None:
        print("not logged in")
        return 0
    try:
        asyncio.run(_tell_cluster(files, logout=True))
    except ClientError as exc:
        print(f"wardgate: warning: the cluster was not told ({exc}); the session ends when it expires", file=sys.stderr)
    files.delete_login()
    print("logged out")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wardgate", description="Wardgate client: reach private Services")
    parser.add_argument("--version", action="version", version=f"wardgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("login", help="exchange an auth token for a session (stored 0600 in your config dir)")
    p.add_argument("--domain", required=True, help="the cluster's domain")
    p.add_argument("--auth-token", help="an AUTH_TOKEN credential (prefer $WARDGATE_AUTH_TOKEN or the prompt)")
    p.add_argument("--ca", help="the cluster's CA certificate (PEM), when it is not in the system trust store")
    p.add_argument("--address", help="reach the domain at HOST[:PORT] instead of resolving it")
    p.set_defaults(func=cmd_login)
    p = sub.add_parser("connect", help="bring up the tunnel (needs root); foreground unless --detach")
    p.add_argument("--detach", action="store_true", help="run in the background")
    p.add_argument("--interface", default=DEFAULT_INTERFACE, help=f"WireGuard interface (default {DEFAULT_INTERFACE})")
    p.add_argument("--dns", default="auto", choices=["auto", "netns", "resolved", "resolv-conf", "off"])
    p.set_defaults(func=cmd_connect)
    p = sub.add_parser("status", help="session, tunnel, handshake, traffic, and the Services reachable (exit 3: down)")
    p.set_defaults(func=cmd_status)
    sub.add_parser("disconnect", help="take the tunnel down").set_defaults(func=cmd_disconnect)
    sub.add_parser("logout", help="disconnect and end the session").set_defaults(func=cmd_logout)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    files = StateFiles()
    try:
        code: int = args.func(files, args)
        return code
    except ClientError as exc:
        print(f"wardgate: error: {exc}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return tunnel.EXIT_SESSION_ENDED if isinstance(exc, SessionEnded) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
