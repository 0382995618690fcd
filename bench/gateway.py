"""`make bench`: the gateway against the direct path, side by side, in one run, measured with wrk.

Starts the fake OpenAI-compatible provider and a Wardgate cluster (its own home in a temporary
directory), applies three public Services, and runs wrk against: the provider directly (the baseline),
Wardgate with an empty pipeline (authentication + an allow-all rule), the same with retries, a fallback
and a first-token timeout configured (`retry`: their cost when nothing fails), and Wardgate with the full
pipeline (OAuth2 access token, a my-api-like CEL policy, a dynamic-config rule, a small Lua plugin,
secret injection, the access log to a file), and that full pipeline with one Quota on (`quota`: a requests
and a tokens limit too high to refuse: what counting costs). Prints latency p50/p99 at c=1 and throughput
at c=32 and c=128, for JSON and SSE answers, each with its ratio to the direct path, plus peak RSS and
the Quota's cost per request against the full pipeline. --soak N adds
N seconds of load on the full pipeline, printing the gateway's RSS every 30 s, and exits 1 when RSS
grows more than 10 % between the end of the first minute and the end. --pin runs the scale-out row
under taskset: N workers on N cores, wrk and the provider on the other cores where the machine has any
(each row says where they had to share).

    .venv/bin/python bench/gateway.py [--duration 10] [--workers 1,2] [--soak 600] [--pin]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOMAIN = "bench.test"
PROVIDER_KEY = "sk-bench-provider-key"
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "temperature": 0.2,
    "messages": [{"role": "user", "content": "Say something short about gateways."}],
}
LUA = """
function onRequest(ctx)
  local body = json.decode(wardgate.req.getRequestBody())
  if body.temperature ~= nil and body.temperature > 0.7 then
    body.temperature = 0.7
  end
  wardgate.req.setRequestHeader("x-bench-plugin", "1")
  wardgate.req.setRequestBody(json.encode(body))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, context: ssl.SSLContext | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, context=context, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def manifests(upstream: str, with_plugin: bool) -> list[dict[str, Any]]:
    allow_all = {"inlinePolicies": [{"spec": {"rules": [{"effect": "ALLOW", "condition": {"matchAny": True}}]}}]}
    my_api = {
        "inlinePolicies": [
            {
                "spec": {
                    "rules": [
                        {
                            "effect": "ALLOW",
                            "condition": {
                                "all": {
                                    "of": [
                                        {"match": 'ctx.user.spec.groups.hasAll("dev", "ops")'},
                                        {"match": "size(ctx.request.http.bodyMap.messages) < 4"},
                                        {"match": 'ctx.request.http.bodyMap.model in ["gpt-4o-mini", "gpt-4o"]'},
                                        {"match": "ctx.request.http.bodyMap.temperature < 0.7"},
                                    ]
                                }
                            },
                        }
                    ]
                }
            }
        ]
    }
    http: dict[str, Any] = {"auth": {"bearer": {"fromSecret": "provider-key"}}}
    if with_plugin:
        http["plugins"] = [{"name": "clamp", "lua": {"inline": LUA}}]
    full_spec: dict[str, Any] = {
        "isPublic": True,
        "config": {"upstream": {"url": upstream}, "http": http},
        "dynamicConfig": {
            "configs": [{"name": "primary", "upstream": {"url": upstream}, "http": http}],
            "rules": [
                {"condition": {"match": 'ctx.request.http.bodyMap.model == "gpt-4o-mini"'}, "configName": "primary"}
            ],
        },
        "authorization": my_api,
    }
    return [
        {"kind": "Group", "metadata": {"name": "dev"}, "spec": {}},
        {"kind": "Group", "metadata": {"name": "ops"}, "spec": {}},
        {"kind": "User", "metadata": {"name": "bench"}, "spec": {"type": "WORKLOAD", "groups": ["dev", "ops"]}},
        {"kind": "Secret", "metadata": {"name": "provider-key"}, "spec": {"data": {"value": PROVIDER_KEY}}},
        {
            "kind": "Service",
            "metadata": {"name": "empty"},
            "spec": {
                "isPublic": True,
                "config": {"upstream": {"url": upstream}, "http": {"auth": {"bearer": {"fromSecret": "provider-key"}}}},
                "authorization": allow_all,
            },
        },
        {
            "kind": "Service",
            "metadata": {"name": "resilient"},
            "spec": {
                "isPublic": True,
                "config": {
                    "upstream": {"url": upstream},
                    "http": {"auth": {"bearer": {"fromSecret": "provider-key"}}},
                    "retry": {"attempts": 3, "on": [429, "5xx", "connect", "timeout", "reset"], "timeout": "30s"},
                    "fallbacks": [{"configName": "backup", "model": "gpt-4o"}],
                    "firstTokenTimeout": "10s",
                },
                "dynamicConfig": {
                    "configs": [
                        {
                            "name": "backup",
                            "upstream": {"url": upstream},
                            "http": {"auth": {"bearer": {"fromSecret": "provider-key"}}},
                        }
                    ]
                },
                "authorization": allow_all,
            },
        },
        {"kind": "Service", "metadata": {"name": "full"}, "spec": full_spec},
        {"kind": "Service", "metadata": {"name": "quota"}, "spec": full_spec},
        {
            "kind": "Quota",
            "metadata": {"name": "bench"},
            "spec": {
                "services": ["quota"],
                "per": "user",
                "limits": [{"requests": 10**12, "window": "1m"}, {"tokens": 10**15, "window": "1m"}],
            },
        },
    ]


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    connections: int,
    duration: float,
    script_dir: Path,
    prefix: Sequence[str] = (),
) -> WrkResult:
    """wrk's numbers for one target; `prefix` runs wrk under another command (taskset, `ip netns exec`)."""
    script = script_dir / f"wrk-{abs(hash((url, json.dumps(headers), json.dumps(body))))}.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(body))}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    threads = min(2, connections)
    out = subprocess.run(
        [
            *prefix,
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            "--timeout",
            "10s",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return WrkResult(rps, p50, p99, errors, total)


def rss_kib(pids: list[int], field: str = "VmHWM") -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


class Cluster:
    def __init__(self, root: Path, upstream: str, workers: int, with_plugin: bool) -> None:
        self.home = root / f"home-{workers}"
        self.public_port = free_port()
        admin_port = free_port()
        subprocess.run(
            [
                str(BIN / "wardgate-cluster"),
                "init",
                "--home",
                str(self.home),
                "--domain",
                DOMAIN,
                "--admin-listen",
                f"127.0.0.1:{admin_port}",
                "--public-listen",
                f"127.0.0.1:{self.public_port}",
            ],
            check=True,
            capture_output=True,
        )
        settings = self.home / "cluster.toml"
        settings.write_text(settings.read_text().replace("stdout = true", "stdout = false"))
        self.log = (root / f"cluster-{workers}.log").open("wb")
        self.process = subprocess.Popen(
            [str(BIN / "wardgate-cluster"), "run", "--home", str(self.home), "--workers", str(workers)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.context = ssl.create_default_context(cafile=str(self.home / "ca.crt"))
        wait_http(f"https://127.0.0.1:{admin_port}/healthz", self.context)
        env = {**os.environ, "WARDGATE_CONFIG": str(self.home / "wardgatectl.toml")}
        manifest = root / f"bench-{workers}.yaml"
        manifest.write_text(yaml.safe_dump_all(manifests(upstream, with_plugin)))
        subprocess.run(
            [str(BIN / "wardgatectl"), "apply", "-f", str(manifest)], env=env, check=True, capture_output=True
        )
        out = subprocess.run(
            [str(BIN / "wardgatectl"), "create", "credential", "bench-oauth", "--user", "bench", "--type", "oauth2"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        secret = next(line.split(": ", 1)[1].strip() for line in out.splitlines() if "client_secret" in line)
        self.token = self._token(secret)
        time.sleep(1.0)

    def _token(self, secret: str) -> str:
        form = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": "bench-oauth", "client_secret": secret}
        ).encode()
        request = urllib.request.Request(
            f"https://127.0.0.1:{self.public_port}/oauth2/token", data=form, headers={"Host": DOMAIN}
        )
        with urllib.request.urlopen(request, context=self.context) as r:
            return str(json.loads(r.read())["access_token"])

    def pids(self) -> list[int]:
        return [self.process.pid, *children_of(self.process.pid)]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--workers", default="1,2", help="worker counts for the scale-out row")
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak on the full pipeline")
    parser.add_argument("--no-plugin", action="store_true", help="leave the Lua plugin out of the full pipeline")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="scale-out row with taskset: N workers on N cores, wrk and the provider on the others where there are any",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk (make bench installs it)", file=sys.stderr)
        return 1
    if args.pin and shutil.which("taskset") is None:
        print("--pin needs taskset (util-linux)", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="wardgate-bench-"))
    provider_port = free_port()
    provider = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_provider",
            "--host",
            "127.0.0.1",
            "--port",
            str(provider_port),
            "--api-key",
            PROVIDER_KEY,
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    upstream = f"http://127.0.0.1:{provider_port}"
    wait_http(upstream + "/v1/models")
    worker_counts = [int(n) for n in args.workers.split(",") if n]
    clusters: dict[int, Cluster] = {}
    try:
        cluster = clusters.setdefault(1, Cluster(root, upstream, 1, not args.no_plugin))
        gateway = f"https://127.0.0.1:{cluster.public_port}/v1/chat/completions"
        auth = {"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"}
        targets = {
            "direct": (
                f"http://127.0.0.1:{provider_port}/v1/chat/completions",
                {"Authorization": f"Bearer {PROVIDER_KEY}", "Content-Type": "application/json"},
            ),
            "empty": (gateway, {**auth, "Host": f"empty.{DOMAIN}"}),
            "retry": (gateway, {**auth, "Host": f"resilient.{DOMAIN}"}),
            "full": (gateway, {**auth, "Host": f"full.{DOMAIN}"}),
            "quota": (gateway, {**auth, "Host": f"quota.{DOMAIN}"}),
        }
        bodies = {"json": BODY, "sse": {**BODY, "stream": True, "stream_options": {"include_usage": True}}}
        rows: list[tuple[str, str, str, WrkResult]] = []
        for mode, body in bodies.items():
            for name, (url, headers) in targets.items():
                rows.append((mode, name, "c=1", run_wrk(url, headers, body, 1, args.duration, root)))
                for c in (32, 128):
                    rows.append((mode, name, f"c={c}", run_wrk(url, headers, body, c, args.duration, root)))
        peak = rss_kib(cluster.pids())
        print_table(rows, peak)
        print_quota_cost(rows)
        if args.pin:
            scale_out_pinned(clusters, worker_counts, upstream, provider.pid, root, args)
        else:
            scale_out(clusters, worker_counts, upstream, root, args)
        if args.soak > 0 and not soak(clusters[worker_counts[-1]], args.soak, root):
            return 1
        return 0
    finally:
        for running in clusters.values():
            running.stop()
        provider.terminate()
        provider.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _scale_cluster(
    clusters: dict[int, Cluster], n: int, upstream: str, root: Path, args: argparse.Namespace
) -> tuple[Cluster, str, dict[str, str]]:
    """The n-worker cluster (started in place of the others: one gateway at a time), its URL and headers."""
    if n not in clusters:
        for old in list(clusters):
            clusters.pop(old).stop()
        clusters[n] = Cluster(root, upstream, n, not args.no_plugin)
    c = clusters[n]
    url = f"https://127.0.0.1:{c.public_port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {c.token}", "Content-Type": "application/json", "Host": f"full.{DOMAIN}"}
    return c, url, headers


def scale_out(
    clusters: dict[int, Cluster], worker_counts: list[int], upstream: str, root: Path, args: argparse.Namespace
) -> None:
    scale: list[tuple[int, WrkResult]] = []
    for n in worker_counts:
        _, url, headers = _scale_cluster(clusters, n, upstream, root, args)
        scale.append((n, run_wrk(url, headers, BODY, 32, args.duration, root)))
    print("\nScale-out, full pipeline, JSON, c=32:")
    for n, result in scale:
        print(
            f"  workers={n}: {result.requests_per_second:8.0f} req/s  p50 {result.p50_ms:.2f} ms  "
            f"errors {result.errors}"
        )


@dataclass(frozen=True)
class Placement:
    """Cores for one scale-out row: the gateway's N workers on N cores, the load (wrk, the provider) elsewhere
    when there are cores left; `note` says where they had to share."""

    gateway: list[int]
    wrk: list[int]
    provider: list[int]
    note: str


def place(workers: int, cores: list[int]) -> Placement:
    if workers > len(cores):
        return Placement(cores, cores, cores, f"only {len(cores)} cores for {workers} workers: nothing pinned apart")
    gateway, rest = cores[:workers], cores[workers:]
    if not rest:
        note = f"{len(cores)} cores: wrk and the provider share the gateway's cores (they cannot be apart)"
        return Placement(gateway, cores, cores, note)
    if len(rest) == 1:
        return Placement(gateway, rest, rest, "wrk and the provider share the one other core")
    half = len(rest) // 2
    return Placement(gateway, rest[:half], rest[half:], "gateway, wrk and the provider each on their own cores")


def _cpus(cores: list[int]) -> str:
    return ",".join(map(str, cores))


def pin(pids: list[int], cores: list[int]) -> None:
    """Every thread of each process onto `cores` (threads and children made later inherit it)."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", _cpus(cores), str(pid)], check=True, capture_output=True)


def scale_out_pinned(
    clusters: dict[int, Cluster],
    worker_counts: list[int],
    upstream: str,
    provider_pid: int,
    root: Path,
    args: argparse.Namespace,
) -> None:
    """The scale-out row with taskset: 1 worker on 1 core vs 2 workers on 2 cores, as `--workers` lists them."""
    cores = sorted(os.sched_getaffinity(0))
    rows: list[tuple[int, Placement, WrkResult]] = []
    try:
        for n in worker_counts:
            c, url, headers = _scale_cluster(clusters, n, upstream, root, args)
            where = place(n, cores)
            pin(c.pids(), where.gateway)
            pin([provider_pid], where.provider)
            prefix = ("taskset", "-c", _cpus(where.wrk))
            rows.append((n, where, run_wrk(url, headers, BODY, 32, args.duration, root, prefix=prefix)))
    finally:  # the soak, if any, runs unpinned as without --pin
        pin([provider_pid], cores)
        for c in clusters.values():
            pin(c.pids(), cores)
    print(f"\nScale-out, full pipeline, JSON, c=32, pinned with taskset ({len(cores)} cores: {_cpus(cores)}):")
    for n, where, result in rows:
        print(
            f"  workers={n} on cpu {_cpus(where.gateway)}: {result.requests_per_second:8.0f} req/s  "
            f"p50 {result.p50_ms:.2f} ms  errors {result.errors}  (wrk on cpu {_cpus(where.wrk)}, provider on cpu "
            f"{_cpus(where.provider)}; {where.note})"
        )
    base = rows[0][2].requests_per_second if rows else 0.0
    for n, _, result in rows[1:]:
        if base:
            ratio = result.requests_per_second / base
            print(f"  {n} workers / {rows[0][0]}: x{ratio:.2f} (ideal x{n / rows[0][0]:.0f})")


SOAK_SAMPLE_EVERY = 30.0
SOAK_WARMUP = 60.0
SOAK_MAX_GROWTH = 0.10


def soak(cluster: Cluster, seconds: float, root: Path) -> bool:
    """A continuous wrk run on the full pipeline, the gateway's RSS printed every 30 s.

    False (the bench exits 1) when RSS at the end exceeds RSS at the end of the first
    minute (the warm-up: caches, arenas, connection pools) by more than 10 %.
    """
    url = f"https://127.0.0.1:{cluster.public_port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json", "Host": f"full.{DOMAIN}"}
    samples: list[tuple[float, int]] = [(0.0, rss_kib(cluster.pids(), "VmRSS"))]
    print(f"\nSoak {seconds:.0f} s, full pipeline, c=32; gateway RSS every {SOAK_SAMPLE_EVERY:.0f} s:")
    print(f"  t=   0 s  RSS {samples[0][1] / 1024:7.1f} MiB")
    done = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not done.wait(SOAK_SAMPLE_EVERY - (time.monotonic() - started) % SOAK_SAMPLE_EVERY):
            at, kib = time.monotonic() - started, rss_kib(cluster.pids(), "VmRSS")
            samples.append((at, kib))
            print(f"  t={at:4.0f} s  RSS {kib / 1024:7.1f} MiB", flush=True)

    sampler = threading.Thread(target=sample, name="soak-rss", daemon=True)
    sampler.start()
    try:
        result = run_wrk(url, headers, BODY, 32, seconds, root)
    finally:
        done.set()
        sampler.join()
    end = rss_kib(cluster.pids(), "VmRSS")
    samples.append((time.monotonic() - started, end))
    print(
        f"  {result.requests} requests, {result.errors} errors, {result.requests_per_second:.0f} req/s; "
        f"RSS {samples[0][1] / 1024:.1f} MiB at start, {end / 1024:.1f} MiB at end"
    )
    warm = [kib for at, kib in samples if at >= SOAK_WARMUP]
    if len(warm) < 2:
        print(f"  RSS growth not checked: the soak must run past the {SOAK_WARMUP:.0f} s warm-up (e.g. SOAK=300)")
        return True
    growth = (end - warm[0]) / warm[0]
    verdict = f"RSS grew {growth * 100:+.1f} % from the end of the warm-up ({warm[0] / 1024:.1f} MiB) to the end"
    if growth > SOAK_MAX_GROWTH:
        print(f"  FAIL: {verdict}; the limit is {SOAK_MAX_GROWTH * 100:.0f} % (a leak?)")
        return False
    print(f"  ok: {verdict} (limit {SOAK_MAX_GROWTH * 100:.0f} %)")
    return True


def print_table(rows: list[tuple[str, str, str, WrkResult]], peak_kib: int) -> None:
    direct = {(mode, conc): r for mode, name, conc, r in rows if name == "direct"}
    print(
        f"{'body':5} {'target':7} {'conc':6} {'req/s':>9} {'x direct':>9} {'p50 ms':>8} {'+p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>7}"
    )
    for mode, name, conc, r in rows:
        base = direct[(mode, conc)]
        ratio = r.requests_per_second / base.requests_per_second if base.requests_per_second else 0.0
        added = r.p50_ms - base.p50_ms
        print(
            f"{mode:5} {name:7} {conc:6} {r.requests_per_second:9.0f} {ratio:9.2f} {r.p50_ms:8.2f} "
            f"{added:8.2f} {r.p99_ms:8.2f} {r.errors:7d}"
        )
    print(f"\nPeak RSS of the gateway (one worker): {peak_kib / 1024:.1f} MiB")


def print_quota_cost(rows: list[tuple[str, str, str, WrkResult]]) -> None:
    """What one Quota adds to the full pipeline: CPU per request at c=32 (1/throughput, one worker busy) and
    latency at c=1."""
    by = {(mode, name, conc): r for mode, name, conc, r in rows}
    print("\nOne Quota (a requests and a tokens limit) on the full pipeline, per request:")
    for mode in sorted({mode for mode, _, _, _ in rows}):
        full, quota = by[(mode, "full", "c=32")], by[(mode, "quota", "c=32")]
        alone, counted = by[(mode, "full", "c=1")], by[(mode, "quota", "c=1")]
        if not full.requests_per_second or not quota.requests_per_second:
            print(f"  {mode}: no throughput to compare")
            continue
        extra_us = (1 / quota.requests_per_second - 1 / full.requests_per_second) * 1e6
        print(
            f"  {mode:5} c=32: {full.requests_per_second:.0f} -> {quota.requests_per_second:.0f} req/s "
            f"({extra_us:+.0f} us per request);  c=1 p50: {alone.p50_ms:.2f} -> {counted.p50_ms:.2f} ms "
            f"({counted.p50_ms - alone.p50_ms:+.2f} ms)"
        )


if __name__ == "__main__":
    sys.exit(main())
