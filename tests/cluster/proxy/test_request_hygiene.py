"""Request hygiene without sockets: the session-cookie parser is the one the gateway reads requests with, the
path normaliser is a fixed point, and the header filters in both directions."""

from __future__ import annotations

import random

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError
from yarl import URL

from wardgate.cluster.authorize import facts
from wardgate.cluster.authorize.facts import RequestFacts, normalize_path, policy_headers
from wardgate.cluster.errors import Invalid, Unauthenticated
from wardgate.cluster.identity.authenticate import SESSION_COOKIE, session_cookie, without_session_cookie
from wardgate.cluster.proxy.headers import client_response_headers, upstream_request_headers
from wardgate.cluster.resources.service import HeaderConfig

COOKIES = [
    "wardgate_session=t",
    "wardgate_session =t; a=b",
    "wardgate_session\t=\tt",
    "a=b, wardgate_session=t",
    "a=b,wardgate_session=t",
    'wardgate_session="t"; a=b',
    'a="x; wardgate_session=t"; c=d',
    'a="x; wardgate_session=t',
    "a b=c; wardgate_session=t",
    ";; wardgate_session = t ;",
    "Wardgate_Session=t",
    "$wardgate_session=t",
    "x=y=wardgate_session=t",
    "wardgate_session",
    "theme=dark; lang=en",
]


@pytest.mark.parametrize("header", COOKIES)
def test_the_session_cookie_is_read_as_aiohttp_reads_request_cookies(header: str) -> None:
    request = make_mocked_request("GET", "/", headers={"Cookie": header})
    assert session_cookie([header]) == request.cookies.get(SESSION_COOKIE)


@pytest.mark.parametrize("header", COOKIES)
def test_what_is_left_of_a_cookie_header_holds_no_session_cookie(header: str) -> None:
    kept = without_session_cookie(header)
    assert session_cookie([kept]) is None
    assert "wardgate_session" not in kept.lower()


def test_other_cookies_are_kept_as_the_parser_read_them() -> None:
    assert without_session_cookie('theme=dark; wardgate_session=t; q="a b"') == 'theme=dark; q="a b"'


def test_different_session_cookies_are_ambiguous() -> None:
    assert session_cookie(["wardgate_session=t", "x=1; wardgate_session=t"]) == "t"
    with pytest.raises(Unauthenticated):
        session_cookie(["wardgate_session=a; wardgate_session=b"])
    with pytest.raises(Unauthenticated):
        session_cookie(["wardgate_session=a", "wardgate_session=b"])


PATHS = [
    ("/", "/"),
    ("//admin/x", "/admin/x"),
    ("/./admin", "/admin"),
    ("/a/../admin", "/admin"),
    ("/../../admin", "/admin"),
    ("/%61dmin", "/admin"),
    ("/%2e%2E/admin", "/admin"),
    ("/a/.%2e/b", "/b"),
    ("/v1/models/.", "/v1/models/"),
    ("/v1/models/", "/v1/models/"),
    ("/a/..", "/"),
    ("/%7e%41", "/~A"),
    ("/a%20b/%3b/%40", "/a%20b/%3B/%40"),
    ("/%C3%A9", "/%C3%A9"),
    ("/%252e", "/%252e"),
    ("/a;b/c", "/a;b/c"),
    ("/a/%2f/b", None),
    ("/a%5Cb", None),
    ("/a\\b", None),
    ("/a%00", None),
    ("/%2e%2e%2fadmin", None),
    ("admin", None),
    ("", None),
]


@pytest.mark.parametrize(("raw", "normal"), PATHS)
def test_normalize_path(raw: str, normal: str | None) -> None:
    assert normalize_path(raw) == normal
    if normal is not None:
        assert normalize_path(normal) == normal  # a fixed point: the upstream's own normalising changes nothing


@pytest.mark.parametrize(("raw", "path"), [("/%61dmin/a%20b", "/admin/a b"), ("/v1//./x?q=%61", "/v1/x")])
def test_facts_carry_the_normalised_path_decoded_and_raw(raw: str, path: str) -> None:
    facts = RequestFacts.of("get", URL(raw, encoded=True), {}, host="h", scheme="https", ip="")
    assert facts.path == path and facts.raw_path == normalize_path(URL(raw, encoded=True).raw_path)


def test_facts_refuse_an_encoded_separator() -> None:
    with pytest.raises(Invalid):
        RequestFacts.of("GET", URL("/a%2Fb", encoded=True), {}, host="h", scheme="https", ip="")


def test_policies_see_cookies_without_the_session_cookie() -> None:
    seen = policy_headers({"Cookie": "a=b, wardgate_session=t; c=d", "Authorization": "Bearer t"})
    assert seen == {"cookie": "a=b,; c=d"}


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_identity_headers_are_stripped_in_any_spelling_and_named_ones_pass() -> None:
    incoming = _headers(
        ("True-Client-IP", "1.1.1.1"),
        ("True_Client_IP", "2.2.2.2"),
        ("X-Amzn-Oidc-Data", "x"),
        ("x_ms_client_principal_name", "x"),
        ("X_Forwarded_For", "x"),
        ("X-Wardgate-User", "x"),
        ("Connection", "x_hop"),
        ("X-Hop", "x"),
        ("Cookie", "wardgate_session=t; a=b"),
        ("X-Kept", "y"),
    )
    assert list(upstream_request_headers(incoming, ()).items()) == [("Cookie", "a=b"), ("X-Kept", "y")]
    passed = upstream_request_headers(incoming, (), ["True-Client-IP"])
    assert passed.getall("True-Client-IP") == ["1.1.1.1"]


@pytest.mark.parametrize(
    ("set_cookie", "kept"),
    [
        ("a=1; Path=/; Secure; HttpOnly", True),
        ("a=1; Domain=wardgate.test", False),
        ("a=1;domain=", False),
        ("a=1; Path=/; DoMaIn = .example", False),
        ("wardgate_session=x", False),
        ("__Secure-WARDGATE_SESSION=x; Path=/", False),
        ("a=domain=x; Path=/", True),
    ],
)
def test_upstream_set_cookie_stays_on_its_host(set_cookie: str, kept: bool) -> None:
    out = client_response_headers(_headers(("Set-Cookie", set_cookie), ("Set_Cookie", "b=1")), ())
    assert out.getall("Set-Cookie", []) == ([set_cookie] if kept else [])


@pytest.mark.parametrize("name", ["Authorization", "X-Wardgate-User", "X-Forwarded-For", "Host", "X-Unknown", "a b"])
def test_pass_identity_headers_names_only_strippable_identity_headers(name: str) -> None:
    with pytest.raises(ValidationError, match=r"identity header|header name"):
        HeaderConfig.model_validate({"passIdentityHeaders": [name]})


def test_pass_identity_headers_accepts_identity_headers_and_their_families() -> None:
    config = HeaderConfig.model_validate({"passIdentityHeaders": ["True-Client-IP", "X-Goog-Iap-Jwt-Assertion"]})
    assert config.pass_identity_headers == ["True-Client-IP", "X-Goog-Iap-Jwt-Assertion"]


def test_the_fast_path_for_normal_paths_agrees_with_the_full_normalisation() -> None:
    """Paths already in normal form are returned without the work; over random paths built from the
    characters that matter, the answer is the same as the full normalisation's."""
    rng = random.Random(20261203)
    pieces = ["/", "//", ".", "..", "a", "b", "%2e", "%2F", "%61", "%00", "\\", "~", "...", ";", "%", "é"]
    for _ in range(20_000):
        raw = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert normalize_path(raw) == facts._normalize(raw), raw
