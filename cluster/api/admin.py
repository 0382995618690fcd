"""Admin routes: resource CRUD and apply under /api/v1, JSON in and out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from wardgate.cluster.api.admission import admit
from wardgate.cluster.api.apply import CLUSTER_MADE, MANAGED_BY_APPLY, plan_apply
from wardgate.cluster.api.bodies import json_body
from wardgate.cluster.api.policy_eval import evaluate as evaluate_policy
from wardgate.cluster.api.state import CHECK_EXPRESSION, POLICY_EVAL, PROPAGATION, STORE
from wardgate.cluster.errors import Invalid, NotFound
from wardgate.cluster.identity import credentials
from wardgate.cluster.resources.credential import Credential, CredentialType
from wardgate.cluster.resources.kinds import AnyResource, plural_to_kind, public_view
from wardgate.cluster.resources.manifest import ManifestError, validate_document
from wardgate.cluster.resources.session import Session
from wardgate.cluster.resources.types import parse_duration
from wardgate.cluster.store import Create, Delete, Op, Update

routes = web.RouteTableDef()


def _kind(request: web.Request) -> str:
    try:
        return plural_to_kind(request.match_info["plural"])
    except KeyError as exc:
        raise NotFound(str(exc.args[0])) from None


@routes.get("/api/v1/{plural}")
async def list_resources(request: web.Request) -> web.Response:
    items = await request.app[STORE].list_kind(_kind(request))
    return web.json_response({"items": [public_view(r) for r in items]})


@routes.get("/api/v1/{plural}/{name}")
async def get_resource(request: web.Request) -> web.Response:
    resource = await request.app[STORE].get(_kind(request), request.match_info["name"])
    return web.json_response(public_view(resource))


async def _stored(request: web.Request) -> dict[tuple[str, str], AnyResource]:
    _, everything = await request.app[STORE].snapshot()
    return {(r.kind, r.metadata.name): r for r in everything}


def _with(
    stored: dict[tuple[str, str], AnyResource], incoming: list[AnyResource]
) -> dict[tuple[str, str], AnyResource]:
    return {**stored, **{(r.kind, r.metadata.name): r for r in incoming}}


def _admit(request: web.Request, incoming: list[AnyResource], visible: dict[tuple[str, str], AnyResource]) -> list[str]:
    errors, warnings = admit(incoming, visible, request.app[CHECK_EXPRESSION])
    if errors:
        raise Invalid("rejected: " + "; ".join(errors), errors)
    return warnings


@routes.put("/api/v1/{plural}/{name}")
async def put_resource(request: web.Request) -> web.Response:
    """Create or replace one resource (used by `create secret`); status is kept by the cluster."""
    kind, name = _kind(request), request.match_info["name"]
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Invalid("the request body must be a resource object")
    try:
        resource = validate_document({**body, "kind": kind}, "request", 1)
    except ManifestError as exc:
        raise Invalid(str(exc), [str(p) for p in exc.problems]) from None
    if resource.metadata.name != name:
        raise Invalid(f"metadata.name {resource.metadata.name!r} does not match the URL ({name!r})")
    if kind in CLUSTER_MADE:
        raise Invalid(f"{kind} resources are made by the cluster, not written directly: {CLUSTER_MADE[kind]}")
    warnings = _admit(request, [resource], _with(await _stored(request), [resource]))
    store = request.app[STORE]
    try:
        current = await store.get(kind, name)
    except NotFound:
        (stored,) = await store.commit([Create(resource.with_metadata(managed_by="cli"))])
        action = "created"
    else:
        update = resource.model_copy(update={"status": current.status}).with_metadata(
            managed_by=current.metadata.managed_by,
            resource_version=resource.metadata.resource_version or current.metadata.resource_version,
        )
        (stored,) = await store.commit([Update(update)])
        action = "configured"
    assert stored is not None
    await _settle(request)
    return web.json_response({"action": action, "resource": public_view(stored), "warnings": warnings})


def _cascade(kind: str, name: str, stored: dict[tuple[str, str], AnyResource]) -> list[Op]:
    """What goes with a deleted resource: a Credential's Sessions; a User's Credentials and Sessions."""
    ops: list[Op] = []
    for (other_kind, other_name), other in sorted(stored.items()):
        if isinstance(other, Session) and (
            (kind == "Credential" and other.spec.credential == name) or (kind == "User" and other.spec.user == name)
        ):
            ops.append(Delete("Session", other_name))
        elif isinstance(other, Credential) and kind == "User" and other.spec.user == name:
            ops.append(Delete(other_kind, other_name))
    return ops


async def _settle(request: web.Request) -> None:
    """Wait until every worker of this node serves our write: revocations take effect before we answer."""
    revision = await request.app[STORE].revision()
    await request.app[PROPAGATION].settle(revision)


@routes.delete("/api/v1/{plural}/{name}")
async def delete_resource(request: web.Request) -> web.Response:
    kind, name = _kind(request), request.match_info["name"]
    stored = await _stored(request)
    current = stored.get((kind, name))
    if current is not None and current.metadata.managed_by == "init":
        raise Invalid(
            f"{kind.lower()}/{name} was made by `wardgate-cluster init` and keeps the cluster administrable; "
            "it cannot be deleted (change it instead)"
        )
    cascade = _cascade(kind, name, stored) if kind in ("Credential", "User") else []
    await request.app[STORE].commit([Delete(kind, name, request.query.get("resourceVersion")), *cascade])
    await _settle(request)
    also = [f"{op.kind.lower()}/{op.name}" for op in cascade if isinstance(op, Delete)]
    return web.json_response({"action": "deleted", "kind": kind, "name": name, "alsoDeleted": also})


@routes.post("/api/v1/policy/eval")
async def policy_eval(request: web.Request) -> web.Response:
    return await evaluate_policy(request.app[POLICY_EVAL], request)


_CREDENTIAL_TYPES = {
    "oauth2": CredentialType.OAUTH2,
    "auth-token": CredentialType.AUTH_TOKEN,
    "access-token": CredentialType.ACCESS_TOKEN,
}


@routes.post("/api/v1/credentials")
async def create_credential(request: web.Request) -> web.Response:
    """Body {name, user, type: oauth2|auth-token|access-token, expiresIn?, maxSessions?}; the token is
    returned once, in this response, and only its SHA-256 is stored."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Invalid("expected {name, user, type, expiresIn?, maxSessions?}")
    kind = _CREDENTIAL_TYPES.get(str(body.get("type", "")).lower())
    if kind is None:
        raise Invalid(f"type must be one of {', '.join(_CREDENTIAL_TYPES)}")
    spec: dict[str, Any] = {"type": kind.value, "user": body.get("user")}
    if body.get("expiresIn"):
        try:
            seconds = parse_duration(body["expiresIn"])
        except ValueError as exc:
            raise Invalid(f"expiresIn: {exc}") from None
        spec["expiresAt"] = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
    if body.get("maxSessions") is not None:
        spec["maxSessions"] = body["maxSessions"]
    name = str(body.get("name", ""))
    draft = {"kind": "Credential", "metadata": {"name": name}, "spec": spec}
    try:
        validate_document(draft, "request", 1)
    except ManifestError as exc:
        raise Invalid(str(exc), [str(p) for p in exc.problems]) from None
    store = request.app[STORE]
    await store.get("User", str(spec["user"]))
    token, sha, prefix = credentials.generate(name)
    draft["status"] = {"tokenSha256": sha, "tokenPrefix": prefix}
    credential = validate_document(draft, "request", 1).with_metadata(managed_by="cli")
    (stored,) = await store.commit([Create(credential)])
    assert stored is not None
    await _settle(request)
    answer: dict[str, Any] = {"credential": public_view(stored), "token": token}
    if kind is CredentialType.OAUTH2:
        answer.update(clientId=name, clientSecret=token)
    return web.json_response(answer)


@routes.post("/api/v1/apply")
async def apply(request: web.Request) -> web.Response:
    """Body: {documents: [{source, index, object}], dryRun, prune}. All documents are validated and
    admitted before one atomic commit; any problem means nothing is written."""
    body = await json_body(request)
    if not isinstance(body, dict) or not isinstance(body.get("documents"), list):
        raise Invalid("expected {documents: [...], dryRun: bool, prune: bool}")
    resources: list[AnyResource] = []
    problems: list[str] = []
    for entry in body["documents"]:
        if not isinstance(entry, dict):
            raise Invalid("each document entry must be {source, index, object}")
        try:
            resources.append(
                validate_document(entry.get("object"), str(entry.get("source", "?")), int(entry.get("index", 0)))
            )
        except ManifestError as exc:
            problems.extend(str(p) for p in exc.problems)
    if problems:
        raise Invalid("nothing applied: " + "; ".join(problems), problems)
    stored = await _stored(request)
    warnings = _admit(request, resources, _with(stored, resources))
    kinds = {r.kind for r in resources}
    existing = {key: r for key, r in stored.items() if key[0] in kinds}
    ops, outcomes = plan_apply(resources, existing, bool(body.get("prune")))
    if not body.get("dryRun"):
        await request.app[STORE].commit(ops)
        await _settle(request)
    return web.json_response(
        {
            "dryRun": bool(body.get("dryRun")),
            "results": [{"kind": o.kind, "name": o.name, "action": o.action.value} for o in outcomes],
            "warnings": warnings,
            "managedBy": MANAGED_BY_APPLY,
        }
    )
