"""`make bench-ladder`: what each stage of the gateway's pipeline costs, one worker, rounds interleaved.

Each rung adds one stage to the one before it and is its own target, measured with wrk over HTTPS against the
fake provider (the bench's chat body, JSON answer):

    plumbing  bench/plumbing.py's minimal proxy, aiohttp's server (TLS) and the httptools client: the gateway's
              HTTP plumbing and nothing else (it forwards the body with the provider key)
    empty     the gateway with bench/gateway.py's `empty` Service: access-token check, session and user, an
              allow-all rule, the secret injected, metering, the access log
    policy    empty + the my-api-like CEL policy (4 conditions, `hasAll`, the body map)
    routed    policy + a dynamic-config rule on the body's model
    full      routed + the Lua plugin that decodes, edits and re-encodes the body (bench/gateway.py's `full`)

Every round runs direct, then every rung, so a busy moment hits all of them alike; the table shows medians.
Per rung: req/s at c=32, the CPU of the process serving it per request at c=32 (user + system, every thread,
from /proc), what the rung added to the one before, and the p50 at c=1 over direct's. With one worker the
event loop is one core: 1,000,000 / (CPU µs per request) bounds req/s however idle the machine.

    .venv/bin/python bench/ladder.py [--rounds 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench.gateway import BIN, BODY, DOMAIN, PROVIDER_KEY, Cluster, free_port, manifests, run_wrk, wait_http  # noqa: E402
from bench.plumbing import Variant, cpu_seconds, make_certificate  # noqa: E402

RUNGS = ("plumbing", "empty", "policy", "routed", "full")


def rung_services(upstream: str) -> list[dict[str, Any]]:
    """`policy` and `routed`: bench/gateway.py's `full` Service without its plugin, then without its routing."""
    docs = manifests(upstream, with_plugin=True)
    full = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "full")["spec"]
    empty = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "empty")["spec"]
    routed = copy.deepcopy(full)
    routed["config"]["http"].pop("plugins")
    for config in routed["dynamicConfig"]["configs"]:
        config["http"].pop("plugins", None)
    policy = {"isPublic": True, "config": copy.deepcopy(empty["config"]), "authorization": full["authorization"]}
    return [
        {"kind": "Service", "metadata": {"name": "policy"}, "spec": policy},
        {"kind": "Service", "metadata": {"name": "routed"}, "spec": routed},
    ]


def apply(cluster: Cluster, docs: list[dict[str, Any]], root: Path) -> None:
    manifest = root / "ladder.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    env = {**os.environ, "WARDGATE_CONFIG": str(cluster.home / "wardgatectl.toml")}
    subprocess.run([str(BIN / "wardgatectl"), "apply", "-f", str(manifest)], env=env, check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (make bench-ladder installs it)", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="wardgate-ladder-"))
    provider_port = free_port()
    provider = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_provider", "--host", "127.0.0.1", "--port", str(provider_port),
         "--api-key", PROVIDER_KEY],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    upstream = f"http://127.0.0.1:{provider_port}"
    plumbing = Variant("aiohttp", "httptools", True, free_port())
    cluster: Cluster | None = None
    try:
        wait_http(upstream + "/v1/models")
        cert, key = make_certificate(root)
        plumbing.start(upstream, cert, key, root / "plumbing.log")
        cluster = Cluster(root, upstream, 1, True)
        apply(cluster, rung_services(upstream), root)
        wait_http(plumbing.url + "/v1/models", context=_insecure())
        gateway = f"https://127.0.0.1:{cluster.public_port}/v1/chat/completions"
        auth = {"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"}
        direct_headers = {"Authorization": f"Bearer {PROVIDER_KEY}", "Content-Type": "application/json"}
        targets: dict[str, tuple[str, dict[str, str], list[int]]] = {
            "direct": (f"{upstream}/v1/chat/completions", direct_headers, [provider.pid]),
            "plumbing": (f"{plumbing.url}/v1/chat/completions", {"Content-Type": "application/json"}, plumbing.pids()),
        }
        for name in RUNGS[1:]:
            targets[name] = (gateway, {**auth, "Host": f"{name}.{DOMAIN}"}, cluster.pids())
        for url, headers, _ in targets.values():  # warm-up: caches, pools, first calls; every answer must be a 200
            warm = run_wrk(url, headers, BODY, 32, 1, root)
            if warm.errors:
                raise RuntimeError(f"warm-up of {url} ({headers.get('Host')}): {warm.errors} errors")
        rps: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        p50: dict[str, list[float]] = {name: [] for name in targets}
        errors = dict.fromkeys(targets, 0)
        for round_ in range(args.rounds):
            print(f"# round {round_ + 1}/{args.rounds}, load average {os.getloadavg()[0]:.2f}", flush=True)
            for name, (url, headers, pids) in targets.items():
                before = cpu_seconds(pids)
                result = run_wrk(url, headers, BODY, 32, args.duration, root)
                spent = cpu_seconds(pids) - before
                single = run_wrk(url, headers, BODY, 1, args.duration, root)
                rps[name].append(result.requests_per_second)
                cpu[name].append(spent / max(result.requests, 1) * 1e6)
                p50[name].append(single.p50_ms)
                errors[name] += result.errors + single.errors
        print_ladder(rps, cpu, p50, errors, args)
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        plumbing.stop()
        provider.terminate()
        provider.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _insecure() -> Any:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def print_ladder(
    rps: dict[str, list[float]],
    cpu: dict[str, list[float]],
    p50: dict[str, list[float]],
    errors: dict[str, int],
    args: argparse.Namespace,
) -> None:
    med = statistics.median
    print(
        f"\nPipeline ladder: JSON chat completion over HTTPS, one worker, medians of {args.rounds} interleaved "
        f"rounds of {args.duration:g} s, {os.cpu_count()} cores (wrk and the provider on the same cores)"
    )
    print(
        f"{'rung':9} {'c=32 req/s':>10} {'CPU µs/req':>11} {'added µs':>9} {'bound req/s':>12} "
        f"{'c=1 +p50 ms':>12} {'errors':>7}"
    )
    direct_p50 = med(p50["direct"])
    previous: float | None = None
    for name in ("direct", *RUNGS):
        used = med(cpu[name])
        added = "" if name == "direct" or previous is None else f"{used - previous:+9.0f}"
        bound = "" if name == "direct" else f"{1e6 / used:12.0f}" if used else ""
        print(
            f"{name:9} {med(rps[name]):10.0f} {used:11.0f} {added:>9} {bound:>12} "
            f"{med(p50[name]) - direct_p50:12.2f} {errors[name]:7d}"
        )
        if name != "direct":
            previous = used
    print("(direct's CPU is the provider's; `bound` is 1,000,000 / CPU µs per request: one core's ceiling)")


if __name__ == "__main__":
    sys.exit(main())
