"""Resilience fields of a Service config: defaults, the issue's shape, and bad input rejected with its field."""

from __future__ import annotations

import pytest

from wardgate.cluster.authorize.resilience import fallback_order, retry_policy
from wardgate.cluster.resources import ManifestError, parse_manifest
from wardgate.cluster.resources.service import Service, ServiceConfig

HEAD = """
kind: Service
metadata: {name: total-ai}
spec:
"""


def _service(body: str) -> Service:
    (svc,) = parse_manifest(HEAD + body)
    assert isinstance(svc, Service)
    return svc


def _problem(body: str) -> str:
    with pytest.raises(ManifestError) as info:
        parse_manifest(HEAD + body)
    return str(info.value)


ISSUE_SHAPE = """
  config:
    upstream: {url: https://generativelanguage.googleapis.com}
    retry: {attempts: 2, on: [429, 5xx, connect, timeout], backoff: 200ms, maxBackoff: 2s}
    fallbacks:
      - {configName: openai, model: gpt-4o-mini}
      - {configName: deepseek, model: deepseek-chat}
    firstTokenTimeout: 10s
  dynamicConfig:
    configs:
      - {name: openai, upstream: {url: https://api.openai.com}}
      - {name: deepseek, upstream: {url: https://api.deepseek.com}}
"""


def test_the_issue_shape_parses_with_bare_yaml_on() -> None:
    config = _service(ISSUE_SHAPE).spec.config
    assert config is not None
    assert config.retry.attempts == 2 and config.retry.on == [429, "5xx", "connect", "timeout"]
    assert config.retry.backoff == 0.2 and config.retry.max_backoff == 2.0
    assert [(f.config_name, f.model) for f in config.fallbacks] == [
        ("openai", "gpt-4o-mini"),
        ("deepseek", "deepseek-chat"),
    ]
    assert config.first_token_timeout == 10.0 and config.resilient
    policy = retry_policy(config)
    assert 429 in policy.statuses and 503 in policy.statuses and 404 not in policy.statuses
    assert policy.kinds == {"connect", "timeout"}


def test_defaults_are_one_try_and_no_fallback() -> None:
    config = ServiceConfig.model_validate({"upstream": {"url": "http://u.test"}})
    assert config.retry.attempts == 1 and config.fallbacks == [] and config.first_token_timeout is None
    assert config.retry.on == [429, "5xx", "connect"]
    assert not config.resilient and not config.attempts_header
    assert retry_policy(config).kinds == {"connect"}


def test_endpoints_with_weights() -> None:
    svc = _service("""
  config:
    upstream:
      endpoints: [{url: "http://10.0.0.1:8000", weight: 3}, {url: "http://10.0.0.2:8000/v1"}]
      balance: leastInFlight
      health: {failures: 2, cooldown: 5s}
""")
    upstream = svc.spec.config.upstream  # type: ignore[union-attr]
    assert upstream.weighted_urls() == [("http://10.0.0.1:8000", 3), ("http://10.0.0.2:8000/v1", 1)]
    assert upstream.health.failures == 2 and upstream.health.cooldown == 5.0
    assert svc.spec.config.resilient  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "  config: {upstream: {url: 'http://a.test'}, fallbacks: [{configName: opneai}]}\n",
            "config.fallbacks[0].configName: 'opneai' names no config of this Service",
        ),
        (
            "  config: {upstream: {url: 'http://a.test'}, fallbacks: [{configName: default}]}\n",
            "config.fallbacks: a fallback loop: default -> default",
        ),
        (
            """  config: {upstream: {url: 'http://a.test'}, fallbacks: [{configName: b}]}
  dynamicConfig:
    configs:
      - {name: b, upstream: {url: 'http://b.test'}, fallbacks: [{configName: c}]}
      - {name: c, upstream: {url: 'http://c.test'}, fallbacks: [{configName: b}]}
""",
            "fallbacks: a fallback loop: b -> c -> b",
        ),
        (
            "  config: {upstream: {url: 'http://a.test'}, retry: {attempts: 5, maxBackoff: 2s, timeout: 3s}}\n",
            "spec.config.retry: timeout (3s) is not longer than the backoffs alone",
        ),
        (
            "  config: {upstream: {url: 'http://a.test'}, retry: {timeout: 20s}, firstTokenTimeout: 30s}\n",
            "spec.config: firstTokenTimeout (30s) is not shorter than retry.timeout (20s)",
        ),
        (
            "  config: {upstream: {url: 'http://a.test'}, retry: {backoff: 3s, maxBackoff: 1s}}\n",
            "spec.config.retry: maxBackoff (1s) is shorter than backoff (3s)",
        ),
        (
            "  config: {upstream: {url: 'http://a.test'}, retry: {on: [200]}}\n",
            "spec.config.retry.on[0]: 200: only statuses 400-599",
        ),
        (
            "  config: {upstream: {url: 'http://a.test'}, retry: {on: [sometimes]}}\n",
            "spec.config.retry.on[0]: 'sometimes' is not a status",
        ),
        (
            "  config: {upstream: {url: 'http://a.test'}, retry: {attempts: 11}}\n",
            "spec.config.retry.attempts",
        ),
        (
            "  config: {upstream: {url: 'http://a.test', endpoints: [{url: 'http://b.test'}]}}\n",
            "spec.config.upstream: an upstream needs exactly one of url, endpoints and mcpServers",
        ),
        (
            "  config: {upstream: {endpoints: [{url: 'http://b.test'}, {url: 'http://b.test'}]}}\n",
            "endpoints must be unique, repeated: http://b.test",
        ),
        (
            "  config: {upstream: {endpoints: [{url: 'ftp://b.test'}]}}\n",
            "spec.config.upstream.endpoints[0].url",
        ),
    ],
)
def test_bad_input_is_rejected_with_its_field(body: str, expected: str) -> None:
    assert expected in _problem(body)


def test_fallback_order_is_depth_first_each_config_once_with_models_inherited() -> None:
    svc = _service("""
  config: {upstream: {url: 'http://a.test'}, fallbacks: [{configName: b, model: m-b}, {configName: c}]}
  dynamicConfig:
    configs:
      - {name: b, upstream: {url: 'http://b.test'}, fallbacks: [{configName: d}, {configName: c, model: m-c}]}
      - {name: c, upstream: {url: 'http://c.test'}}
      - {name: d, upstream: {url: 'http://d.test'}}
""")
    edges = {name: cfg.fallbacks for name, cfg in svc.spec.all_configs()}
    assert fallback_order("default", edges) == [("b", "m-b"), ("d", "m-b"), ("c", "m-c")]
    assert fallback_order("b", edges) == [("d", None), ("c", "m-c")]
    assert fallback_order("c", edges) == []
