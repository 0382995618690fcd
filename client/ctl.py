"""`wardgatectl`: parse the command line, call the admin API, print. No logic beyond presentation."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from wardgate import __version__
from wardgate.client.admin_api import AdminApi, resolve_connection
from wardgate.client.errors import ClientError
from wardgate.cluster.resources.kinds import KINDS, plural_to_kind
from wardgate.cluster.resources.manifest import ManifestError, parse_documents

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def manifest_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise ClientError(f"{raw}: no such file or directory")
    if not files:
        raise ClientError("no manifest files (*.yaml, *.yml, *.json) found in " + ", ".join(paths))
    return files


def read_documents(paths: list[str]) -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in manifest_files(paths):
        try:
            for index, obj in parse_documents(path.read_text(), str(path)):
                documents.append({"source": str(path), "index": index, "object": obj})
        except ManifestError as exc:
            problems.extend(str(p) for p in exc.problems)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: {exc}")
    if problems:
        raise ClientError("nothing applied", problems)
    return documents


def _age(item: dict[str, Any]) -> str:
    created = item.get("metadata", {}).get("createdAt")
    if not created:
        return "-"
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(created)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _columns(kind: str, item: dict[str, Any]) -> dict[str, str]:
    spec = item.get("spec", {})
    row = {"NAME": item["metadata"]["name"]}
    if kind == "Service":
        config = spec.get("config") or (spec.get("dynamicConfig") or {}).get("configs", [{}])[0]
        row["PUBLIC"] = str(spec.get("isPublic", False)).lower()
        upstream = config.get("upstream", {})
        replicas = upstream.get("endpoints") or []
        row["UPSTREAM"] = upstream.get("url") or (f"{len(replicas)} endpoints" if replicas else "-")
        row["CONFIGS"] = str(1 + len((spec.get("dynamicConfig") or {}).get("configs", [])))
    elif kind == "User":
        row["TYPE"] = spec.get("type", "")
        row["GROUPS"] = ",".join(spec.get("groups", [])) or "-"
        row["EMAIL"] = spec.get("email") or "-"
    elif kind in ("Credential", "Session"):
        row["TYPE"] = spec.get("type", "")
        row["USER"] = spec.get("user", "")
        row["EXPIRES"] = spec.get("expiresAt") or "never"
    elif kind == "Secret":
        row["KEYS"] = ",".join(spec.get("data", {})) or "-"
    elif kind == "Policy":
        row["RULES"] = str(len(spec.get("rules", [])))
    row["AGE"] = _age(item)
    return row


def print_table(kind: str, items: list[dict[str, Any]]) -> None:
    if not items:
        print(f"No {KINDS[kind].plural} found.")
        return
    rows = [_columns(kind, item) for item in items]
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    print("   ".join(h.ljust(widths[h]) for h in headers).rstrip())
    for r in rows:
        print("   ".join(r[h].ljust(widths[h]) for h in headers).rstrip())


async def cmd_apply(api: AdminApi, args: argparse.Namespace) -> int:
    documents = read_documents(args.filename)
    result = await api.call(
        "POST", "/api/v1/apply", {"documents": documents, "dryRun": args.dry_run, "prune": args.prune}
    )
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    suffix = " (dry run)" if result.get("dryRun") else ""
    for r in result["results"]:
        print(f"{r['kind'].lower()}/{r['name']} {r['action']}{suffix}")
    return 0


async def cmd_get(api: AdminApi, args: argparse.Namespace) -> int:
    kind = plural_to_kind(args.kind)
    plural = KINDS[kind].plural
    if args.name:
        data = await api.call("GET", f"/api/v1/{plural}/{args.name}")
        items = [data]
    else:
        data = await api.call("GET", f"/api/v1/{plural}")
        items = data["items"]
    if args.output == "json":
        print(json.dumps(data, indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
    elif kind == "Quota":
        await print_quotas(api, items)
    else:
        print_table(kind, items)
    return 0


def _busiest(entry: dict[str, Any]) -> str:
    busiest = entry.get("busiest")
    if isinstance(busiest, str):
        return f"counters unavailable: {busiest}"
    parts = []
    for key in busiest or []:
        worst = max(key["limits"], key=lambda limit: limit["used"] / limit["max"])
        parts.append(f"{key['key']} {worst['used']:g}/{worst['max']:g} {worst['limit']}")
    return ", ".join(parts) or "-"


async def print_quotas(api: AdminApi, items: list[dict[str, Any]]) -> None:
    """`get quotas`: each Quota with its busiest keys (the live counters, as the gateway sees them)."""
    if not items:
        print("No quotas found.")
        return
    usage = {q["name"]: q for q in (await api.call("GET", "/api/v1/quota-usage"))["items"]}
    rows = []
    for item in items:
        spec, name = item.get("spec", {}), item["metadata"]["name"]
        limits = ",".join(
            f"{next(str(v) for k, v in limit.items() if k != 'window')} {k}/{limit['window']}"
            for limit in spec.get("limits", [])
            for k in [next(k for k in limit if k != "window")]
        )
        rows.append({"NAME": name, "PER": spec.get("per", "user"), "LIMITS": limits,
                     "BUSIEST": _busiest(usage.get(name, {}))})  # fmt: skip
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in rows[0]}
    print("   ".join(h.ljust(widths[h]) for h in widths).rstrip())
    for r in rows:
        print("   ".join(r[h].ljust(widths[h]) for h in widths).rstrip())


async def cmd_usage(api: AdminApi, args: argparse.Namespace) -> int:
    """The usage ledger, summed per user, group, service, model...: table, JSON or CSV."""
    data = await api.call("GET", "/api/v1/usage", params={"by": args.by, "since": args.since})
    items = data["items"]
    columns = ["key", "requests", "inputTokens", "outputTokens", "cachedTokens", "cost", "estimated"]
    if args.output == "json":
        print(json.dumps(data, indent=2))
        return 0
    if args.output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow([args.by if c == "key" else c for c in columns])
        for item in items:
            writer.writerow([item[c] if c != "cost" else f"{item[c]:.6f}" for c in columns])
        return 0
    if not items:
        print(f"No usage in the last {args.since}.")
        return 0
    headers = [args.by.upper(), "REQUESTS", "INPUT", "OUTPUT", "CACHED", f"COST ({data['currency']})", "ESTIMATED"]
    rows = [[str(i[c]) if c != "cost" else f"{i[c]:.4f}" for c in columns] for i in items]
    widths = [max(len(h), *(len(r[n]) for r in rows)) for n, h in enumerate(headers)]
    print("   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        print("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


async def cmd_delete(api: AdminApi, args: argparse.Namespace) -> int:
    kind = plural_to_kind(args.kind)
    result = await api.call("DELETE", f"/api/v1/{KINDS[kind].plural}/{args.name}")
    print(f"{kind.lower()}/{args.name} deleted")
    for other in result.get("alsoDeleted", []):
        print(f"{other} deleted")
    return 0


def _read_value_file(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"--from-file: {exc}") from None


async def cmd_create_secret(api: AdminApi, args: argparse.Namespace) -> int:
    value = args.value if args.value is not None else _read_value_file(args.from_file)
    body = {"kind": "Secret", "metadata": {"name": args.name}, "spec": {"data": {"value": value}}}
    result = await api.call("PUT", f"/api/v1/secrets/{args.name}", body)
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"secret/{args.name} {result['action']}")
    return 0


async def cmd_create_credential(api: AdminApi, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name, "user": args.user, "type": args.type}
    if args.expires_in:
        body["expiresIn"] = args.expires_in
    if args.max_sessions is not None:
        body["maxSessions"] = args.max_sessions
    result = await api.call("POST", "/api/v1/credentials", body)
    print(f"credential/{args.name} created (user {args.user}, {args.type}). Shown once, store it now:")
    if args.type == "oauth2":
        print(f"  client_id:     {result['clientId']}")
        print(f"  client_secret: {result['clientSecret']}")
    else:
        print(f"  token: {result['token']}")
    return 0


def _read_body_arg(value: str | None) -> Any:
    if value is None:
        return None
    text = _read_value_file(value[1:]) if value.startswith("@") else value
    try:
        return json.loads(text)
    except ValueError:
        return text


async def cmd_policy_eval(api: AdminApi, args: argparse.Namespace) -> int:
    """Exit 0 when allowed, 3 when denied (so scripts and CI can assert on policies)."""
    headers = dict(h.split(":", 1) for h in args.header) if args.header else {}
    request: dict[str, Any] = {
        "service": args.service,
        "user": args.user,
        "method": args.method,
        "path": args.path,
        "headers": {k.strip(): v.strip() for k, v in headers.items()},
        "body": _read_body_arg(args.body),
        "sessionType": args.session_type,
    }
    if args.mcp_method is not None:
        arguments = _read_body_arg(args.mcp_arguments) if args.mcp_arguments is not None else {}
        if not isinstance(arguments, dict):
            print("--mcp-arguments: expected a JSON object", file=sys.stderr)
            return 2
        request["mcp"] = {"method": args.mcp_method, "name": args.mcp_name or "", "arguments": arguments}
        request["path"] = args.path or "/mcp"
    elif args.mcp_name is not None or args.mcp_arguments is not None:
        print("--mcp-name and --mcp-arguments need --mcp-method", file=sys.stderr)
        return 2
    request["path"] = request["path"] or "/v1/chat/completions"
    result = await api.call("POST", "/api/v1/policy/eval", request)
    decision = result["decision"]
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(f"decision: {decision['effect']}")
        print(f"reason:   {decision['reason']}")
        if decision.get("policy"):
            print(f"rule:     {decision['policy']} {decision['rule']}")
        if decision.get("detail"):
            print(f"detail:   {decision['detail']}")
        print(f"config:   {result.get('config') or '-'}")
        for note in result.get("notes", []):
            print(f"note:     {note}")
    return 0 if decision["effect"] == "ALLOW" else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wardgatectl", description="Administer a Wardgate cluster")
    parser.add_argument("--version", action="version", version=f"wardgatectl {__version__}")
    parser.add_argument("--config", help="wardgatectl.toml (default: $WARDGATE_CONFIG or ~/.config/wardgate/)")
    parser.add_argument("--url", help="admin API URL (or $WARDGATE_URL)")
    parser.add_argument("--ca", help="CA certificate file (or $WARDGATE_CA)")
    parser.add_argument("--token", help="admin token (prefer $WARDGATE_TOKEN: flags show in `ps`)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("apply", help="create or update resources from YAML files or directories")
    p.add_argument("-f", "--filename", action="append", required=True, help="file or directory (repeatable)")
    p.add_argument("--prune", action="store_true", help="delete applied-kind resources no longer declared")
    p.add_argument("--dry-run", action="store_true", help="validate and report, write nothing")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("get", help="list resources of a kind, or show one")
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("usage", help="LLM usage from the ledger: tokens and cost per user, group, service, model")
    p.add_argument("--by", choices=["user", "group", "credential", "session", "service", "model", "config"],
                   default="user")  # fmt: skip
    p.add_argument("--since", default="24h", help="how far back, e.g. 1h, 24h, 30d (default 24h)")
    p.add_argument("-o", "--output", choices=["table", "json", "csv"], default="table")
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser("delete", help="delete a resource (deleting a session revokes it)")
    p.add_argument("kind")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("policy", help="test policies without traffic")
    policy = p.add_subparsers(dest="what", required=True)
    e = policy.add_parser("eval", help="the decision the gateway would make (exit 0 allow, 3 deny)")
    e.add_argument("--service", required=True)
    e.add_argument("--user", required=True)
    e.add_argument("--body", help="JSON text, or @FILE")
    e.add_argument("--method", default="POST")
    e.add_argument("--path", help="default /v1/chat/completions (/mcp with --mcp-method)")
    e.add_argument("--header", action="append", help="NAME:VALUE (repeatable)")
    e.add_argument("--session-type", default="CLIENTLESS", choices=["CLIENT", "CLIENTLESS"])
    e.add_argument("--mcp-method", help="an MCP Service's JSON-RPC method (ctx.request.mcp.method), e.g. tools/call")
    e.add_argument("--mcp-name", help="the tool or prompt name, or the resource URI (ctx.request.mcp.name)")
    e.add_argument("--mcp-arguments", help="the call's arguments: a JSON object, or @FILE")
    e.add_argument("-o", "--output", choices=["text", "json"], default="text")
    e.set_defaults(func=cmd_policy_eval)

    p = sub.add_parser("create", help="create a secret or a credential")
    create = p.add_subparsers(dest="what", required=True)
    s = create.add_parser("secret", help="create or replace a Secret (the value is never printed)")
    s.add_argument("name")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--value")
    source.add_argument("--from-file")
    s.set_defaults(func=cmd_create_secret)
    c = create.add_parser("credential", help="create a credential; its secret is printed once")
    c.add_argument("name")
    c.add_argument("--user", required=True)
    c.add_argument("--type", required=True, choices=["oauth2", "auth-token", "access-token"])
    c.add_argument("--expires-in", help="e.g. 30d, 12h (default: never)")
    c.add_argument("--max-sessions", type=int)
    c.set_defaults(func=cmd_create_credential)
    return parser


async def _main(args: argparse.Namespace) -> int:
    connection = resolve_connection(args.config, args.url, args.ca, args.token)
    async with AdminApi(connection) as api:
        code: int = await args.func(api, args)
        return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except ClientError as exc:
        print(f"wardgatectl: error: {exc}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except KeyError as exc:
        print(f"wardgatectl: error: {exc.args[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
