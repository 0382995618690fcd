"""A real cluster process on loopback (HTTPS with its generated CA), driven by the real wardgatectl."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, RunningCluster
from tests.factories import CLUSTER_MADE_DOCUMENTS
from wardgate.cluster.api.apply import CLUSTER_MADE
from wardgate.cluster.resources.kinds import KINDS


def _http(cluster: RunningCluster, path: str, token: str | None = None) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(cluster.url + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=cluster.ssl_context(), timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_init_writes_a_private_home(cluster: RunningCluster) -> None:
    for name in ("admin.token", "ca.key", "tls.key", "store.key", "signing.key", "wardgatectl.toml"):
        mode = stat.S_IMODE(os.stat(cluster.home / name).st_mode)
        assert mode == 0o600, f"{name} is {oct(mode)}"
    assert cluster.token.startswith("wgt.root-admin.")


def test_apply_the_examples_then_reapply_is_unchanged(cluster: RunningCluster) -> None:
    first = cluster.ctl("apply", "-f", str(REPO / "configs" / "resources"), check=True)
    assert "service/gemini created" in first.stdout
    assert "service/total-ai created" in first.stdout
    assert "user/alice created" in first.stdout
    assert "secret 'gemini-api-key', which does not exist yet" in first.stderr
    second = cluster.ctl("apply", "-f", str(REPO / "configs" / "resources"), check=True)
    assert "service/gemini unchanged" in second.stdout
    assert "created" not in second.stdout and "configured" not in second.stdout
    table = cluster.ctl("get", "services", check=True).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "PUBLIC", "UPSTREAM"]
    assert any(line.startswith("total-ai") and " 3 " in line for line in table.splitlines())


def test_configure_prune_and_dry_run(cluster: RunningCluster, tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    shutil.copy(REPO / "configs" / "resources" / "gemini.yaml", manifests)
    shutil.copy(REPO / "configs" / "resources" / "my-api.yaml", manifests)
    cluster.ctl("apply", "-f", str(manifests), check=True)
    text = (manifests / "gemini.yaml").read_text().replace("/v1beta/openai", "/v1beta/other")
    (manifests / "gemini.yaml").write_text(text)
    (manifests / "my-api.yaml").unlink()
    dry = cluster.ctl("apply", "-f", str(manifests), "--prune", "--dry-run", check=True)
    assert "service/gemini configured (dry run)" in dry.stdout
    assert "service/my-api pruned (dry run)" in dry.stdout
    assert "my-api" in cluster.ctl("get", "services", check=True).stdout
    done = cluster.ctl("apply", "-f", str(manifests), "--prune", check=True)
    assert "service/gemini configured" in done.stdout and "service/my-api pruned" in done.stdout
    got = yaml.safe_load(cluster.ctl("get", "service", "gemini", "-o", "yaml", check=True).stdout)
    assert got["spec"]["config"]["http"]["path"]["addPrefix"] == "/v1beta/other"
    assert "my-api" not in cluster.ctl("get", "services", check=True).stdout


def test_one_bad_document_means_nothing_is_written(cluster: RunningCluster, tmp_path: Path) -> None:
    bad = tmp_path / "set.yaml"
    bad.write_text(
        (REPO / "configs" / "resources" / "gemini.yaml").read_text()
        + "---\nkind: Service\nmetadata: {name: broken}\nspec: {config: {upstream: {url: 'http://u'}, colour: red}}\n"
    )
    result = cluster.ctl("apply", "-f", str(bad))
    assert result.returncode == 1
    assert f"{bad}: document 2 (Service/broken): spec.config.colour: unknown field" in result.stderr
    assert "No services found." in cluster.ctl("get", "services", check=True).stdout


def test_bad_cel_is_rejected_at_apply_with_its_position(cluster: RunningCluster, tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text(
        "kind: Policy\nmetadata: {name: broken}\nspec:\n  rules:\n"
        "    - effect: ALLOW\n      condition: {match: 'ctx.user.spec.groups.hasAll(\"dev\"'}\n"
    )
    result = cluster.ctl("apply", "-f", str(bad))
    assert result.returncode == 1
    assert "policy/broken: spec.rules[0].condition.match" in result.stderr
    assert "broken" not in cluster.ctl("get", "policies", check=True).stdout


def test_malformed_yaml_names_the_line(cluster: RunningCluster, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: {name: x\nspec: {}\n")
    result = cluster.ctl("apply", "-f", str(bad))
    assert result.returncode == 1
    assert "invalid YAML at line" in result.stderr


def test_secrets_are_write_only(cluster: RunningCluster) -> None:
    created = cluster.ctl("create", "secret", "gemini-api-key", "--value", "AIza-canary-secret", check=True)
    assert created.stdout.strip() == "secret/gemini-api-key created"
    assert "AIza-canary-secret" not in created.stdout + created.stderr
    for fmt in ("json", "yaml", "table"):
        out = cluster.ctl("get", "secret", "gemini-api-key", "-o", fmt, check=True).stdout
        assert "AIza-canary-secret" not in out
    listed = json.loads(cluster.ctl("get", "secrets", "-o", "json", check=True).stdout)
    assert listed["items"][0]["spec"]["data"] == {"value": "**********"}
    store_bytes = b"".join(p.read_bytes() for p in cluster.home.glob("store.db*"))
    assert b"AIza-canary-secret" not in store_bytes
    assert "AIza-canary-secret" not in "".join(cluster.access_log())
    assert "AIza-canary-secret" not in cluster.log_path.read_text()
    replaced = cluster.ctl("create", "secret", "gemini-api-key", "--value", "second", check=True)
    assert replaced.stdout.strip() == "secret/gemini-api-key configured"


def test_credentials_show_no_hash(cluster: RunningCluster) -> None:
    out = json.loads(cluster.ctl("get", "credentials", "-o", "json", check=True).stdout)
    (cred,) = out["items"]
    assert cred["metadata"]["name"] == "root-admin"
    assert "tokenSha256" not in cred["status"]
    assert cluster.token not in json.dumps(out)


def _put(cluster: RunningCluster, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(cluster.url + path, data=json.dumps(body).encode(), method="PUT")
    request.add_header("Authorization", f"Bearer {cluster.token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, context=cluster.ssl_context(), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_kinds_the_cluster_makes_are_neither_applied_nor_written(cluster: RunningCluster, tmp_path: Path) -> None:
    for kind, document in CLUSTER_MADE_DOCUMENTS.items():
        manifest = tmp_path / f"{kind}.yaml"
        manifest.write_text(yaml.safe_dump(document))
        applied = cluster.ctl("apply", "-f", str(manifest))
        assert applied.returncode == 1
        assert f"{kind} cannot be applied: {CLUSTER_MADE[kind]}" in applied.stderr and "(HTTP 422)" in applied.stderr
        status, body = _put(cluster, f"/api/v1/{KINDS[kind].plural}/forged", document)
        assert status == 422
        assert body["error"] == {
            "type": "invalid",
            "message": f"{kind} resources are made by the cluster, not written directly: {CLUSTER_MADE[kind]}",
        }
        listed = json.loads(cluster.ctl("get", KINDS[kind].plural, "-o", "json", check=True).stdout)
        assert "forged" not in [item["metadata"]["name"] for item in listed["items"]]


def test_admin_api_requires_the_admin_credential(cluster: RunningCluster) -> None:
    status, headers, body = _http(cluster, "/api/v1/services")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert body == {"error": {"type": "unauthenticated", "message": "a valid admin credential is required"}}
    forged = cluster.token[:-4] + "AAAA"
    assert _http(cluster, "/api/v1/services", forged)[0] == 401
    assert _http(cluster, "/api/v1/services", "not-even-a-token")[0] == 401
    assert _http(cluster, "/api/v1/services", cluster.token)[0] == 200
    lines = [json.loads(line) for line in cluster.access_log()]
    denied = [e for e in lines if e["status"] == 401]
    assert len(denied) == 3
    assert all(e["path"] == "/api/v1/services" and e["reason"] for e in denied)
    assert "token does not match" in denied[1]["reason"]
    assert forged not in "".join(cluster.access_log())


def test_wrong_ca_is_refused(cluster: RunningCluster) -> None:
    env = {**cluster.env, "WARDGATE_CA": "/etc/ssl/certs/ca-certificates.crt"}
    result = cluster.ctl("get", "services", env=env)
    assert result.returncode == 1
    assert "TLS verification" in result.stderr or "certificate" in result.stderr


def test_stale_delete_and_unknown_names(cluster: RunningCluster) -> None:
    missing = cluster.ctl("delete", "service", "ghost")
    assert missing.returncode == 1 and "service/ghost not found" in missing.stderr
    unknown = cluster.ctl("get", "widgets")
    assert unknown.returncode == 1 and "unknown kind 'widgets'" in unknown.stderr


def test_unreachable_cluster_is_explained(cluster: RunningCluster) -> None:
    env = {**cluster.env, "WARDGATE_URL": "https://127.0.0.1:1"}
    result = cluster.ctl("get", "services", env=env)
    assert result.returncode == 1
    assert "cannot reach the cluster at https://127.0.0.1:1" in result.stderr


def test_stale_resource_version_is_refused(cluster: RunningCluster, tmp_path: Path) -> None:
    cluster.ctl("apply", "-f", str(REPO / "configs" / "resources" / "gemini.yaml"), check=True)
    exported = yaml.safe_load(cluster.ctl("get", "service", "gemini", "-o", "yaml", check=True).stdout)
    exported.pop("status")
    exported["spec"]["isPublic"] = False
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(exported))
    assert "service/gemini configured" in cluster.ctl("apply", "-f", str(edited), check=True).stdout
    exported["spec"]["isPublic"] = True
    edited.write_text(yaml.safe_dump(exported))
    stale = cluster.ctl("apply", "-f", str(edited))
    assert stale.returncode == 1
    assert "changed since it was read" in stale.stderr and "(HTTP 409)" in stale.stderr
    got = yaml.safe_load(cluster.ctl("get", "service", "gemini", "-o", "yaml", check=True).stdout)
    assert got["spec"]["isPublic"] is False


def test_metrics_endpoint_counts_admin_requests(cluster: RunningCluster) -> None:
    cluster.ctl("get", "services", check=True)
    cluster.ctl("get", "widgets")
    request = urllib.request.Request(cluster.url + "/metrics")
    with urllib.request.urlopen(request, context=cluster.ssl_context(), timeout=10) as response:
        text = response.read().decode()
    node = socket.gethostname()  # every series carries the node's name (the host's when [node] has none)
    assert f'wardgate_requests_total{{decision="-",listener="admin",node="{node}",service="-",status="200"}}' in text
    assert f'wardgate_active_sessions{{node="{node}",type="CLIENTLESS"}} 0.0' in text
    assert cluster.token not in text
