"""Resource models: the examples parse, and every kind of bad input names the document, field and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories import make_secret
from wardgate.cluster.identity.oauth_clients import code_name, new_code
from wardgate.cluster.resources import ManifestError, parse_manifest
from wardgate.cluster.resources.credential import Secret
from wardgate.cluster.resources.kinds import KINDS, from_document, plural_to_kind, public_view, to_document
from wardgate.cluster.resources.service import Service
from wardgate.cluster.resources.types import parse_duration

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "resources"


def test_every_example_manifest_parses() -> None:
    names = set()
    for path in sorted(CONFIGS.glob("*.yaml")):
        for resource in parse_manifest(path.read_text(), str(path)):
            names.add(f"{resource.kind}/{resource.metadata.name}")
    assert {"Service/gemini", "Service/total-ai", "Service/my-api", "Service/safe-gemini"} <= names


def test_total_ai_shape() -> None:
    (svc,) = parse_manifest((CONFIGS / "total-ai.yaml").read_text())
    assert isinstance(svc, Service)
    assert [name for name, _ in svc.spec.all_configs()] == ["default", "openai", "deepseek"]
    assert [r.config_name for r in svc.spec.dynamic_config.rules] == ["openai", "deepseek"]  # type: ignore[union-attr]
    paths = [p for p, _ in svc.spec.expressions()]
    assert paths == [
        "spec.dynamicConfig.rules[0].condition.match",
        "spec.dynamicConfig.rules[1].condition.match",
    ]


def _problems(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, "f.yaml")
    return [str(p) for p in info.value.problems]


SERVICE = "kind: Service\nmetadata: {name: s}\nspec: {config: {upstream: {url: 'http://u'}}}\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: Service\nmetadata: {name: s}\nspec: {config: {upstream: {url: 'http://u'}, bogus: 1}}",
            "f.yaml: document 1 (Service/s): spec.config.bogus: unknown field",
        ),
        (
            "kind: Service\nmetadata: {name: Not_A_Label}\nspec: {config: {upstream: {url: 'http://u'}}}",
            "metadata.name: 'Not_A_Label' is not a DNS label",
        ),
        ("kind: Gizmo\nmetadata: {name: s}", "f.yaml: document 1: kind: unknown kind 'Gizmo'"),
        ("metadata: {name: s}", "kind: missing"),
        (
            "kind: Service\nmetadata: {name: s}\nspec: {isPublic: maybe, config: {upstream: {url: 'http://u'}}}",
            "spec.isPublic: Input should be a valid boolean",
        ),
        ("kind: Service\nmetadata: {name: s}\nspec: {}", "a Service needs config"),
        (
            "kind: Service\nmetadata: {name: s}\nspec: {config: {upstream: {url: 'file:///etc/passwd'}}}",
            "spec.config.upstream.url: 'file:///etc/passwd': the scheme must be http or https",
        ),
        (
            "kind: Service\nmetadata: {name: s}\nspec: {config: {upstream: {url: 'http://u'}, "
            "http: {path: {addPrefix: '/a/../../b'}}}}",
            "spec.config.http.path.addPrefix",
        ),
        (
            "kind: Service\nmetadata: {name: s}\nspec: {config: {upstream: {url: 'http://u'}, "
            'http: {header: {addRequestHeaders: [{name: x, value: "a\\r\\nb"}]}}}}',
            "must not contain CR, LF or NUL",
        ),
        (
            "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{effect: ALLOW, condition: {}}]}",
            "spec.rules[0].condition: a condition needs exactly one of",
        ),
        (
            "kind: Policy\nmetadata: {name: p}\nspec: {rules: [{effect: MAYBE, condition: {matchAny: true}}]}",
            "spec.rules[0].effect",
        ),
        ("kind: User\nmetadata: {name: u}\nspec: {type: ROBOT}", "spec.type"),
        ("- a\n- b", "expected a mapping, got list"),
        ("kind: Service\nmetadata: {name: s\nspec: x", "invalid YAML at line"),
        (
            SERVICE + "---\n" + SERVICE.replace("name: s", "name: t").replace("http://u", "gopher://u"),
            "f.yaml: document 2 (Service/t): spec.config.upstream.url",
        ),
        (
            "kind: Service\nmetadata: {name: s}\nspec:\n  dynamicConfig:\n    configs: [{name: a, upstream: {url: 'http://u'}}]"
            "\n    rules: [{condition: {matchAny: true}, configName: b}]",
            "names no config in configs",
        ),
    ],
)
def test_bad_input_names_the_spot(text: str, expected: str) -> None:
    assert any(expected in p for p in _problems(text)), _problems(text)


def test_all_problems_are_reported_at_once() -> None:
    text = SERVICE.replace("http://u", "x") + "---\n" + "kind: Nope\nmetadata: {name: n}\n"
    problems = _problems(text)
    assert len(problems) == 2
    assert "document 1" in problems[0] and "document 2" in problems[1]


def test_secret_values_never_serialise() -> None:
    secret = make_secret("k", "do-not-print-me")
    assert "do-not-print-me" not in repr(secret)
    assert "do-not-print-me" not in secret.model_dump_json()
    assert "do-not-print-me" not in str(public_view(secret))
    stored = to_document(secret, reveal=True)
    assert stored["spec"]["data"] == {"value": "do-not-print-me"}
    back = from_document(stored)
    assert isinstance(back, Secret) and back.spec.reveal() == {"value": "do-not-print-me"}


def test_an_authorization_codes_view_shows_only_a_prefix_of_its_hash() -> None:
    code, record = new_code(
        client="c", user="alice", session="s", redirect_uri="http://127.0.0.1:1/cb",
        challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", resource="https://x.example/mcp", scope="",
    )  # fmt: skip
    view = public_view(record)
    assert record.metadata.name == code_name(code)
    assert view["metadata"]["name"] == code_name(code)[:13] + "…"
    assert code_name(code)[13:] not in json.dumps(view) and code not in json.dumps(view)


def test_models_are_frozen() -> None:
    secret = make_secret()
    with pytest.raises(Exception, match="frozen"):
        secret.metadata.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("word", "kind"),
    [
        ("services", "Service"),
        ("svc", "Service"),
        ("Policy", "Policy"),
        ("identityproviders", "IdentityProvider"),
        ("session", "Session"),
    ],
)
def test_kind_aliases(word: str, kind: str) -> None:
    assert plural_to_kind(word) == kind


def test_unknown_kind_alias_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="known: "):
        plural_to_kind("widgets")
    assert len(KINDS) == 14  # + OAuthClient and AuthorizationCode (made by the authorization server)


@pytest.mark.parametrize(
    ("raw", "seconds"), [(30, 30.0), ("500ms", 0.5), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0)]
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["soon", -1, 0, True, "5 parsecs"])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(raw)
