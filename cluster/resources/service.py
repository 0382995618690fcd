"""Service: an upstream reachable through the gateway, with its HTTP config, dynamic configs and authorization."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from wardgate.cluster.resources.mcp import McpServer as McpServer  # re-exported: proxy/mcp_servers.py
from wardgate.cluster.resources.mcp import check_mcp_servers
from wardgate.cluster.resources.meta import EmptyStatus, Model, Name, Resource
from wardgate.cluster.resources.policy import Authorization, Condition
from wardgate.cluster.resources.resilience import Balance, EndpointHealth, Fallbacks, Retry, check_fallbacks
from wardgate.cluster.resources.types import Duration, HeaderName, HeaderValue, SecretRef, UpstreamUrl


class Endpoint(Model):
    """One replica of an upstream; a `weight` of 2 gets twice the requests of a weight of 1."""

    url: UpstreamUrl
    weight: int = Field(default=1, ge=1, le=100)


class Upstream(Model):
    """Where requests go: an `http://` or `https://` base URL (its path is prepended to every request), or
    several `endpoints` (replicas) shared by `balance` (`roundRobin` by weight, or `leastInFlight`), each
    left out for a while after failing in a row (`health`); or, for an MCP Service, several `mcpServers`
    listed and called as one server."""

    url: UpstreamUrl | None = None
    endpoints: list[Endpoint] = Field(default_factory=list, max_length=64)
    mcp_servers: list[McpServer] = Field(default_factory=list, max_length=16)
    balance: Balance = "roundRobin"
    health: EndpointHealth = Field(default_factory=EndpointHealth)

    @model_validator(mode="after")
    def _url_or_endpoints(self) -> Upstream:
        if [self.url is not None, bool(self.endpoints), bool(self.mcp_servers)].count(True) != 1:
            raise ValueError("an upstream needs exactly one of url, endpoints and mcpServers")
        urls = [e.url for e in self.endpoints]
        dup = sorted({u for u in urls if urls.count(u) > 1})
        if dup:
            raise ValueError(f"endpoints must be unique, repeated: {', '.join(dup)}")
        check_mcp_servers(self.mcp_servers)
        return self

    def weighted_urls(self) -> list[tuple[str, int]]:
        """(url, weight) of every endpoint; a lone `url` is one endpoint of weight 1, as is each MCP server."""
        if self.url is not None:
            return [(self.url, 1)]
        if self.mcp_servers:
            return [(m.url, 1) for m in self.mcp_servers]
        return [(e.url, e.weight) for e in self.endpoints]


def _check_prefix(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("/"):
        raise ValueError(f"{value!r} must start with '/'")
    segments = value.split("/")
    if any(s in (".", "..") for s in segments) or "%" in value or "\\" in value or "?" in value:
        raise ValueError(f"{value!r} must not contain '.', '..', '%', '?' or '\\' segments")
    return value


class PathConfig(Model):
    """Path rewriting: `removePrefix` is taken off the request path, then `addPrefix` is put in front."""

    add_prefix: str | None = None
    remove_prefix: str | None = None

    @field_validator("add_prefix", "remove_prefix")
    @classmethod
    def _check_prefixes(cls, value: str | None) -> str | None:
        return _check_prefix(value)


# fmt: off
IDENTITY_HEADERS = frozenset({
    "true-client-ip", "x-client-ip", "cf-connecting-ip", "fastly-client-ip", "x-cluster-client-ip", "client-ip",
    "x-originating-ip", "x-remote-ip", "x-remote-addr", "x-envoy-external-address", "x-forwarded",
    "forwarded-for", "x-forwarded-server", "x-forwarded-ssl", "x-forwarded-scheme", "x-url-scheme",
    "front-end-https",
    "x-original-url", "x-original-uri", "x-rewrite-url", "x-forwarded-prefix", "x-forwarded-path",
    "x-forwarded-uri", "x-envoy-original-path", "x-original-host", "x-host", "x-http-host-override",
    "x-http-method-override", "x-http-method", "x-method-override",
    "x-authenticated-user", "x-authenticated-userid", "x-authenticated-groups", "x-remote-group",
    "x-remote-groups", "x-remote-email", "x-webauth-user", "x-vouch-user", "x-forwarded-access-token",
    "x-userinfo", "x-id-token", "x-jwt-assertion", "cf-access-jwt-assertion",
    "cf-access-authenticated-user-email",
    "x-forwarded-client-cert", "x-client-cert", "x-ssl-client-cert", "x-ssl-client-dn", "x-client-dn",
    "ssl-client-cert", "x-arr-clientcert",
})
# fmt: on
"""Headers a client sends that common upstreams trust for identity, address or routing: stripped on the way
upstream unless a Service names them in `http.header.passIdentityHeaders`. In order: the client's address as
CDNs and load balancers assert it; the path, host or method a framework would use instead of the request's
own; the user as identity-aware proxies (IAP, ALB, App Service, Cloudflare Access, oauth2-proxy) assert it;
client certificates as TLS-terminating proxies pass them."""
IDENTITY_HEADER_PREFIXES = (
    "x-amzn-oidc-",
    "x-goog-authenticated-user-",
    "x-goog-iap-",
    "x-ms-client-principal",
    "x-ms-token-",
    "x-pomerium-",
)
"""Families of such headers, matched by prefix."""


def identity_header(name: str) -> bool:
    """Whether `name` (lower-case, `_` read as `-`) is one of the strippable identity headers."""
    return name in IDENTITY_HEADERS or name.startswith(IDENTITY_HEADER_PREFIXES)


class HeaderEntry(Model):
    name: HeaderName
    value: HeaderValue


class HeaderConfig(Model):
    """Headers added to or removed from the upstream request and the client's response."""

    add_request_headers: list[HeaderEntry] = Field(default_factory=list)
    remove_request_headers: list[HeaderName] = Field(default_factory=list)
    add_response_headers: list[HeaderEntry] = Field(default_factory=list)
    remove_response_headers: list[HeaderName] = Field(default_factory=list)
    pass_identity_headers: list[HeaderName] = Field(default_factory=list, max_length=64)
    """Identity headers (IDENTITY_HEADERS) the client may send to this upstream, e.g. `True-Client-IP` behind
    a CDN that sets it; every other one is stripped. Only the spelling with `-` passes."""

    @field_validator("pass_identity_headers")
    @classmethod
    def _check_passable(cls, value: list[str]) -> list[str]:
        for name in value:
            if not identity_header(name.lower().replace("_", "-")):
                raise ValueError(
                    f"{name!r} is not an identity header the gateway strips (docs/security.md lists them); "
                    "the gateway's own headers (Authorization, Host, X-Forwarded-For, X-Wardgate-*, ...) "
                    "never pass"
                )
        return value


class Cors(Model):
    """CORS answered by the gateway: preflights never reach the upstream."""

    allow_origins: list[str] = Field(default_factory=list)
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST", "OPTIONS"])
    allow_headers: list[str] = Field(default_factory=lambda: ["authorization", "content-type"])
    expose_headers: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: int = Field(default=600, ge=0, le=86400)


class BearerAuth(SecretRef):
    """`Authorization: Bearer <secret>`."""


class BasicAuth(Model):
    """`Authorization: Basic base64(username:password)`."""

    username: str = Field(min_length=1)
    password: SecretRef


class CustomAuth(SecretRef):
    """Any header (e.g. `x-goog-api-key`), optionally with a prefix before the secret."""

    header: HeaderName
    prefix: HeaderValue = ""


class OAuth2ClientCredentialsAuth(Model):
    """The gateway fetches (and caches) an access token from `tokenURL` and sends it as a bearer token."""

    token_url: str
    client_id: str = Field(min_length=1)
    client_secret: SecretRef
    scopes: list[str] = Field(default_factory=list)


class UpstreamAuth(Model):
    """Exactly one way to authenticate to the upstream; it replaces whatever the client sent."""

    bearer: BearerAuth | None = None
    basic: BasicAuth | None = None
    custom: CustomAuth | None = None
    oauth2_client_credentials: OAuth2ClientCredentialsAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> UpstreamAuth:
        given = [k for k in ("bearer", "basic", "custom", "oauth2_client_credentials") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("auth needs exactly one of bearer, basic, custom, oauth2ClientCredentials")
        return self

    def secret_refs(self) -> list[SecretRef]:
        if self.bearer:
            return [self.bearer]
        if self.basic:
            return [self.basic.password]
        if self.custom:
            return [self.custom]
        assert self.oauth2_client_credentials is not None
        return [self.oauth2_client_credentials.client_secret]


def _check_base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r}: an http:// or https:// URL with a host is required")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{value!r}: no query, fragment or user info in an allowed base URL")
    if parts.path not in ("", "/"):
        _check_prefix(parts.path)
    return value


class LuaHttpSpec(Model):
    """What the script's `http.client()` may reach: only URLs under `allowedBaseURLs`, each call bounded."""

    allowed_base_urls: list[str] = Field(default_factory=list, alias="allowedBaseURLs", max_length=64)
    timeout: Duration = 5.0
    max_response_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024 * 1024)
    max_calls: int = Field(default=8, ge=0, le=64)

    @field_validator("allowed_base_urls")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        return [_check_base_url(v) for v in value]


class LuaPluginSpec(Model):
    """A Lua script defining `onRequest(ctx)` and optionally `onResponse(ctx)` (docs/plugins.md).

    Each call is bounded: `maxInstructions` Lua VM instructions, `timeLimit` of script time (waits for
    `http.client()` calls excluded) and `maxMemory` bytes for the runtime; past a bound the request fails.
    """

    inline: str = Field(min_length=1, max_length=256 * 1024)
    http: LuaHttpSpec = Field(default_factory=LuaHttpSpec)
    max_instructions: int = Field(default=10_000_000, ge=10_000, le=1_000_000_000)
    time_limit: Duration = 0.25
    max_memory: int = Field(default=64 * 1024 * 1024, ge=4 * 1024 * 1024, le=1024 * 1024 * 1024)
    max_runtimes: int = Field(default=16, ge=1, le=256)


class ExtProcPluginSpec(Model):
    """An Envoy `ext_proc` external processor reached over gRPC (plaintext HTTP/2), e.g. `127.0.0.1:50051`.

    The request headers (and, with `sendBody`, the buffered body) go out; header and body mutations or an
    immediate response come back. The whole exchange is bounded by `timeout`.
    """

    address: str = Field(min_length=1, max_length=512)
    timeout: Duration = 1.0
    send_body: bool = True


class HeadersPluginSpec(Model):
    """Header edits that apply only when the plugin's condition matches (unconditional ones: `http.header`)."""

    set_request_headers: list[HeaderEntry] = Field(default_factory=list)
    remove_request_headers: list[HeaderName] = Field(default_factory=list)
    set_response_headers: list[HeaderEntry] = Field(default_factory=list)
    remove_response_headers: list[HeaderName] = Field(default_factory=list)


class DirectResponseSpec(Model):
    """Answer from the gateway without contacting the upstream."""

    status_code: int = Field(default=200, ge=100, le=599)
    body: str = ""
    content_type: str = "text/plain"


class Plugin(Model):
    """One entry of the ordered plugin chain; it runs when `condition` matches (always when absent)."""

    name: Name
    condition: Condition | None = None
    fail_open: bool = False
    lua: LuaPluginSpec | None = None
    ext_proc: ExtProcPluginSpec | None = None
    direct_response: DirectResponseSpec | None = None
    headers: HeadersPluginSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Plugin:
        given = [k for k in ("lua", "ext_proc", "direct_response", "headers") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a plugin needs exactly one of lua, extProc, directResponse, headers")
        return self


class BodyConfig(Model):
    """Request body limits. A body over `maxRequestBytes` gets 413 before anything else happens. Only a
    body up to `maxParsedBytes` holding at most `maxParsedValues` JSON values is parsed into `bodyMap` and
    handed to plugins: a larger one passes through unparsed where no policy, dynamic rule or plugin reads it,
    and gets 413 where one does (converting a megabyte of tiny JSON values for CEL, Rego or Lua is how one
    request stalls a node for everyone)."""

    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024)
    max_parsed_bytes: int = Field(default=1024 * 1024, ge=0, le=64 * 1024 * 1024)
    max_parsed_values: int = Field(default=10_000, ge=0, le=10_000_000)


class Timeouts(Model):
    """Upstream timeouts: `connect`, and `read` (the longest wait for the next byte; streams stay open)."""

    connect: Duration = 10.0
    read: Duration = 300.0


class IdentityAssertion(Model):
    """A signed JWT naming the caller, sent upstream in `x-wardgate-assertion` (verify it against the cluster's
    JWKS at `https://<domain>/oauth2/jwks`). `audience` is its `aud` claim; the Service's name when unset."""

    enabled: bool = False
    audience: str | None = Field(default=None, min_length=1, max_length=253)


class HttpConfig(Model):
    path: PathConfig = Field(default_factory=PathConfig)
    header: HeaderConfig = Field(default_factory=HeaderConfig)
    cors: Cors | None = None
    auth: UpstreamAuth | None = None
    plugins: list[Plugin] = Field(default_factory=list)
    body: BodyConfig = Field(default_factory=BodyConfig)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    identity_assertion: IdentityAssertion = Field(default_factory=IdentityAssertion)

    @field_validator("plugins")
    @classmethod
    def _unique_plugins(cls, value: list[Plugin]) -> list[Plugin]:
        names = [p.name for p in value]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"plugin names must be unique, repeated: {', '.join(dup)}")
        return value


class ServiceConfig(Model):
    """Upstream plus HTTP behaviour, and what to do when the upstream fails (docs/resilience.md): `retry`,
    `fallbacks` (configs of the same Service tried in order), `firstTokenTimeout` (a streaming request
    whose first byte takes longer goes to the next fallback), `attemptsHeader` (answer with
    `x-wardgate-attempts`: every try, its config and outcome)."""

    upstream: Upstream
    http: HttpConfig = Field(default_factory=HttpConfig)
    retry: Retry = Field(default_factory=Retry)
    fallbacks: Fallbacks = Field(default_factory=list)
    first_token_timeout: Duration | None = None
    attempts_header: bool = False

    @model_validator(mode="after")
    def _first_token_within_timeout(self) -> ServiceConfig:
        timeout, first = self.retry.timeout, self.first_token_timeout
        if timeout is not None and first is not None and first >= timeout:
            raise ValueError(
                f"firstTokenTimeout ({first:g}s) is not shorter than retry.timeout ({timeout:g}s): it could never fire"
            )
        return self

    @property
    def resilient(self) -> bool:
        """True when a failed try can be followed by another (retry, fallback, another endpoint)."""
        return (
            self.retry.attempts > 1
            or bool(self.fallbacks)
            or self.first_token_timeout is not None
            or len(self.upstream.endpoints) > 1
        )


class NamedConfig(ServiceConfig):
    """A config that dynamicConfig rules can pick by name."""

    name: Name


class DynamicRule(Model):
    condition: Condition
    config_name: Name


class DynamicConfig(Model):
    """Ordered rules; the first whose condition matches picks the config. No match: `spec.config`."""

    configs: list[NamedConfig] = Field(default_factory=list)
    rules: list[DynamicRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_names(self) -> DynamicConfig:
        names = [c.name for c in self.configs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"config names must be unique, repeated: {', '.join(dup)}")
        for i, rule in enumerate(self.rules):
            if rule.config_name != "default" and rule.config_name not in names:
                raise ValueError(f"rules[{i}].configName {rule.config_name!r} names no config in configs")
        return self


class ServiceSpec(Model):
    mode: Literal["HTTP", "MCP"] = "HTTP"
    """`MCP`: the upstream is an MCP server's Streamable HTTP endpoint (`config.upstream.url`), reached at
    `/mcp`; each JSON-RPC call is decided on its own (`ctx.request.mcp`), list answers are filtered."""
    is_public: bool = False
    config: ServiceConfig | None = None
    dynamic_config: DynamicConfig | None = None
    authorization: Authorization = Field(default_factory=Authorization)

    @model_validator(mode="after")
    def _needs_a_config(self) -> ServiceSpec:
        if self.config is None and (self.dynamic_config is None or not self.dynamic_config.configs):
            raise ValueError("a Service needs config, or dynamicConfig with at least one config")
        for name, cfg in self.all_configs():
            if cfg.upstream.mcp_servers and self.mode != "MCP":
                raise ValueError(f"config {name!r}: upstream.mcpServers needs mode: MCP")
            if cfg.upstream.mcp_servers and (cfg.retry.attempts > 1 or cfg.fallbacks):
                raise ValueError(f"config {name!r}: upstream.mcpServers takes no retry or fallbacks")
        if self.config is None and self.dynamic_config is not None:
            for i, rule in enumerate(self.dynamic_config.rules):
                if rule.config_name == "default":
                    raise ValueError(f"dynamicConfig.rules[{i}] picks 'default' but spec.config is not set")
        paths = [("default", "config", self.config)] if self.config is not None else []
        if self.dynamic_config is not None:
            paths += [(c.name, f"dynamicConfig.configs[{i}]", c) for i, c in enumerate(self.dynamic_config.configs)]
        check_fallbacks([(name, path, cfg.fallbacks) for name, path, cfg in paths])
        return self

    def all_configs(self) -> list[tuple[str, ServiceConfig]]:
        """Every config with the name rules use for it (`default` for `spec.config`)."""
        found: list[tuple[str, ServiceConfig]] = []
        if self.config is not None:
            found.append(("default", self.config))
        if self.dynamic_config is not None:
            found.extend((c.name, c) for c in self.dynamic_config.configs)
        return found

    def expressions(self) -> list[tuple[str, str]]:
        """Every CEL expression in the spec, with a field path (for apply-time compilation)."""
        out: list[tuple[str, str]] = []
        if self.dynamic_config is not None:
            for i, rule in enumerate(self.dynamic_config.rules):
                out.extend(condition_expressions(rule.condition, f"spec.dynamicConfig.rules[{i}].condition"))
        for name, cfg in self.all_configs():
            for j, plugin in enumerate(cfg.http.plugins):
                if plugin.condition is not None:
                    where = f"config {name!r} plugins[{j}].condition"
                    out.extend(condition_expressions(plugin.condition, where))
        return out


def condition_expressions(cond: Condition, path: str) -> list[tuple[str, str]]:
    """The CEL (`.match`) and Rego (`.opa.inline`) sources in a condition tree, each with its field path."""
    if cond.match is not None:
        return [(f"{path}.match", cond.match)]
    if cond.opa is not None:
        return [(f"{path}.opa.inline", cond.opa.inline)]
    out: list[tuple[str, str]] = []
    for key, group in (("all", cond.all), ("any", cond.any)):
        if group is not None:
            for i, sub in enumerate(group.of):
                out.extend(condition_expressions(sub, f"{path}.{key}.of[{i}]"))
    if cond.not_ is not None:
        out.extend(condition_expressions(cond.not_, f"{path}.not"))
    return out


class Service(Resource[ServiceSpec, EmptyStatus]):
    """A Service resource."""

    kind_name = "Service"
    plural = "services"
    status: EmptyStatus = Field(default_factory=EmptyStatus)
