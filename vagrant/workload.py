"""What an app on the lab's client machine does, both ways in; each command prints one JSON line.

    private SERVICE              POST http://SERVICE.local.<domain>/v1/chat/completions through the tunnel,
                                 with no Authorization header at all (the gateway knows the user by the tunnel)
    token                        OAuth2 client credentials (ci-bot's, from $WARDGATE_ETC/ci-bot.oauth2) at
                                 https://<domain>/oauth2/token; the access token goes to
                                 $WARDGATE_ETC/ci-bot.access-token (0600)
    public SERVICE               the official openai SDK against https://SERVICE.<domain>/v1 with that token

On a Vagrant client VM: `sudo /opt/wardgate/venv/bin/python /vagrant/vagrant/workload.py private llm`.
The domain comes from --domain, else $WARDGATE_DOMAIN, else vagrant/lab.env; WARDGATE_ETC defaults to
/etc/wardgate (the namespace lab sets its own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import openai

LAB_ENV = Path(__file__).resolve().parent / "lab.env"
ETC = Path(os.environ.get("WARDGATE_ETC", "/etc/wardgate"))  # where vagrant/provision/client.sh put them


def lab_domain() -> str:
    for line in LAB_ENV.read_text().splitlines():
        if line.startswith("WARDGATE_DOMAIN="):
            return line.split("=", 1)[1].strip()
    raise SystemExit(f"{LAB_ENV}: no WARDGATE_DOMAIN")


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def private(args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://{args.service}.local.{args.domain}/v1/chat/completions"
    body = {"model": args.model, "messages": _messages(args.message)}
    try:
        response = httpx.post(url, json=body, timeout=args.timeout)
    except httpx.HTTPError as exc:
        return {"status": None, "url": url, "error": f"{type(exc).__name__}: {exc}"}
    result: dict[str, Any] = {"status": response.status_code, "url": url}
    try:
        answer = response.json()
    except ValueError:
        return {**result, "error": response.text[:300]}
    if response.status_code != 200:
        return {**result, "error": answer}
    choice = answer["choices"][0]
    return {**result, "model": answer["model"], "content": choice["message"]["content"]}


def token(args: argparse.Namespace) -> dict[str, Any]:
    client_id, client_secret = Path(args.credentials).read_text().split()[:2]
    url = f"https://{args.domain}/oauth2/token"
    try:
        response = httpx.post(
            url,
            data={"grant_type": "client_credentials"},
            auth=(client_id, client_secret),
            verify=args.ca,
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        return {"status": None, "url": url, "error": f"{type(exc).__name__}: {exc}"}
    answer = response.json()
    if response.status_code != 200:
        return {"status": response.status_code, "url": url, "error": answer}
    out = Path(args.out)
    out.touch(mode=0o600)
    out.write_text(answer["access_token"])
    return {"status": 200, "url": url, "token_type": answer["token_type"], "expires_in": answer.get("expires_in")}


def public(args: argparse.Namespace) -> dict[str, Any]:
    base_url = f"https://{args.service}.{args.domain}/v1"
    access_token = Path(args.token_file).read_text().strip()
    http_client = openai.DefaultHttpxClient(verify=args.ca, timeout=args.timeout)
    client = openai.OpenAI(base_url=base_url, api_key=access_token, http_client=http_client, max_retries=0)
    extra: dict[str, Any] = {} if args.max_tokens is None else {"max_tokens": args.max_tokens}
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=args.model, messages=[{"role": "user", "content": args.message}], **extra
        )
    except openai.APIStatusError as exc:
        return {"status": exc.status_code, "url": base_url, "error": exc.body}
    except openai.APIConnectionError as exc:
        return {"status": None, "url": base_url, "error": repr(exc.__cause__ or exc)}
    answer = raw.parse()
    choice = answer.choices[0]
    return {
        "status": raw.status_code,
        "url": base_url,
        "model": answer.model,
        "content": choice.message.content,
        "finish_reason": choice.finish_reason,
        "plugin": raw.headers.get("x-wardgate-plugin"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workload.py", description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default=os.environ.get("WARDGATE_DOMAIN") or None)
    parser.add_argument("--ca", default=str(ETC / "ca.crt"), help="the cluster's CA certificate")
    parser.add_argument("--timeout", type=float, default=15.0)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("private")
    p.add_argument("service")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--message", default="hello from the client machine")
    p = sub.add_parser("token")
    p.add_argument("--credentials", default=str(ETC / "ci-bot.oauth2"), help="client_id and client_secret, a line each")
    p.add_argument("--out", default=str(ETC / "ci-bot.access-token"))
    p = sub.add_parser("public")
    p.add_argument("service")
    p.add_argument("--token-file", default=str(ETC / "ci-bot.access-token"))
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--message", default="hello from a workload")
    args = parser.parse_args(argv)
    args.domain = args.domain or lab_domain()
    handler = {"private": private, "token": token, "public": public}[args.command]
    result = handler(args)
    print(json.dumps(result))
    return 0 if result.get("status") == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
