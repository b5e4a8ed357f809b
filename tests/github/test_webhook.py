from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from gitstafette.exceptions import WebhookRejected
from gitstafette.github.webhook import parse_webhook, repository_in_body, routed_by_header, webhook_payload
from gitstafette.model import Watchlist, WebhookEvent
from tests.utils import FIXTURES, github_request

HELLO_WORLD_ID = "186853002"  # Codertocat/Hello-World in the fixtures
OCTOCODERS_ID = "186853261"  # Octocoders/Hello-World (ping.0.json)
RECEIVED_NS = 1_700_000_000_123_456_789
EVERYTHING = Watchlist.parse("*")


def parse(
    headers: dict[str, str] | list[tuple[str, str]], body: bytes, watchlist: Watchlist = EVERYTHING
) -> WebhookEvent:
    """Call ``parse_webhook`` as the HTTP app does: headers by lower-case name, and as received."""
    raw = list(headers.items()) if isinstance(headers, dict) else headers
    return parse_webhook({k.lower(): v for k, v in raw}, raw, body, watchlist, RECEIVED_NS)


def rejected(
    headers: dict[str, str] | list[tuple[str, str]], body: bytes, watchlist: Watchlist = EVERYTHING
) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        parse(headers, body, watchlist)
    return caught.value


FORM = "application/x-www-form-urlencoded"


def as_form(payload: bytes) -> bytes:
    """What a hook with content type "form" sends: the JSON URL-encoded as its one field."""
    return urlencode({"payload": payload.decode()}).encode()


def payload_refusal(body: bytes, content_type: str | None = "application/json") -> WebhookRejected:
    with pytest.raises(WebhookRejected) as caught:
        webhook_payload(body, content_type)
    return caught.value


def org_hook(fixture: str) -> tuple[dict[str, str], bytes]:
    """A fixture as an organization hook sends it: no target id, the repository only in the body."""
    headers, body, _ = github_request(FIXTURES / fixture)
    headers["X-GitHub-Hook-Installation-Target-Type"] = "organization"
    headers["X-GitHub-Hook-Installation-Target-ID"] = "38302899"  # the organization's id, not a repository's
    return headers, body


def test_repository_hook_is_routed_by_the_target_id_header() -> None:
    headers, body, repository_id = github_request(FIXTURES / "push.0.json", delivery_id="d-1")
    assert repository_id == HELLO_WORLD_ID
    event = parse(headers, body, Watchlist.parse(HELLO_WORLD_ID))

    assert event.repository_id == HELLO_WORLD_ID
    assert event.delivery_id == "d-1"
    assert event.event_type == "push"
    assert event.body == body
    assert event.received_at_ns == RECEIVED_NS
    assert event.sequence == 0


def test_repository_hook_body_is_not_parsed_when_the_header_routes_it() -> None:
    headers, _, _ = github_request(FIXTURES / "push.0.json")
    headers["X-GitHub-Hook-Installation-Target-ID"] = "42"
    assert routed_by_header(headers | {k.lower(): v for k, v in headers.items()}) == "42"
    # The header wins over the body. Its body is judged only after the signature check (Ingest, tested
    # through a server in tests/server/test_http_ingest.py), so parse_webhook routes even one that is not JSON.
    assert parse(headers, FIXTURES.joinpath("ping.0.json").read_bytes()).repository_id == "42"
    event = parse(headers, b"\x00not json\xff", Watchlist.parse("42"))
    assert (event.repository_id, event.body) == ("42", b"\x00not json\xff")
    event = parse({**headers, "Content-Type": "text/plain"}, b"{}", Watchlist.parse("42"))
    assert event.repository_id == "42"


@pytest.mark.parametrize("target_type", ["organization", "integration", "Organization"])
def test_organization_and_app_hooks_are_routed_by_the_body(target_type: str) -> None:
    headers, body = org_hook("push.1.json")
    headers["X-GitHub-Hook-Installation-Target-Type"] = target_type
    event = parse(headers, body, Watchlist.parse(HELLO_WORLD_ID))
    assert event.repository_id == HELLO_WORLD_ID
    assert event.repository_name == "Codertocat/Hello-World"
    assert event.body == body


def test_repository_hook_without_target_id_falls_back_to_the_body() -> None:
    headers, body, _ = github_request(FIXTURES / "ping.0.json")
    del headers["X-GitHub-Hook-Installation-Target-ID"]
    assert parse(headers, body).repository_id == OCTOCODERS_ID


def test_form_encoded_organization_hook_is_routed_by_its_payload() -> None:
    headers, body = org_hook("push.1.json")
    headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
    form = urlencode({"payload": body.decode()}).encode()
    event = parse(headers, form)
    assert event.repository_id == HELLO_WORLD_ID
    assert event.body == form  # relayed as it came


def test_form_encoded_body_without_payload_is_refused() -> None:
    headers, body = org_hook("push.1.json")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    error = rejected(headers, urlencode({"data": body.decode()}).encode())
    assert error.status_code == 400


@pytest.mark.parametrize("form", [b"a=1&" * 100, b"payload=%7Bnot+json", b"payload="])
def test_form_encoded_body_that_is_not_a_github_form_is_refused_with_400(form: bytes) -> None:
    headers, _ = org_hook("push.1.json")
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    assert rejected(headers, form).status_code == 400


@pytest.mark.parametrize("watch", ["Codertocat/Hello-World", "codertocat/hello-world", "1, CODERTOCAT/HELLO-WORLD"])
def test_owner_name_in_the_watchlist_matches_both_kinds_of_hook(watch: str) -> None:
    watchlist = Watchlist.parse(watch)
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    event = parse(headers, body, watchlist)
    assert (event.repository_id, event.repository_name) == (HELLO_WORLD_ID, "Codertocat/Hello-World")

    headers, body = org_hook("push.1.json")
    assert parse(headers, body, watchlist).repository_id == HELLO_WORLD_ID

    headers, body, _ = github_request(FIXTURES / "ping.0.json")  # Octocoders/Hello-World
    assert rejected(headers, body, watchlist).status_code == 406


def test_unwatched_repository_is_refused_with_406() -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    error = rejected(headers, body, Watchlist.parse("537845873"))
    assert error.status_code == 406
    assert HELLO_WORLD_ID in error.detail

    headers, body = org_hook("push.1.json")
    assert rejected(headers, body, Watchlist.parse("537845873")).status_code == 406
    assert rejected(headers, body, Watchlist.parse("")).status_code == 406


@pytest.mark.parametrize("form", [False, True])
@pytest.mark.parametrize("fixture", ["organization.member_added.0.json", "installation.created.1.json"])
def test_event_without_a_repository_is_refused_with_406(fixture: str, form: bool) -> None:
    headers, body, repository_id = github_request(FIXTURES / fixture)
    assert repository_id == ""
    if form:
        headers["Content-Type"], body = FORM, as_form(body)
    error = rejected(headers, body)
    assert error.status_code == 406
    assert "without a repository" in error.detail


@pytest.mark.parametrize(
    "repository",
    [
        None,
        "Hello-World",
        [],
        {"full_name": "Codertocat/Hello-World"},
        {"id": True},
        {"id": "12a"},
        {"id": -5},
        {"id": 1.5},
    ],
)
def test_body_repository_without_a_usable_id_is_refused_with_406(repository: object) -> None:
    headers, _ = org_hook("push.1.json")
    body = json.dumps({"ref": "refs/heads/main", "repository": repository}).encode()
    assert rejected(headers, body).status_code == 406


@pytest.mark.parametrize("body", [b'["repository", {"id": 1}]', b'"repository"', b"186853002", b"null", b"true"])
def test_organization_hook_whose_body_is_not_an_object_is_refused_with_400(body: bytes) -> None:
    headers, _ = org_hook("push.1.json")
    error = rejected(headers, body)
    assert error.status_code == 400
    assert "not the JSON object of a GitHub payload" in error.detail


def test_repository_id_given_as_a_string_in_the_body_is_accepted() -> None:
    headers, _ = org_hook("push.1.json")
    assert parse(headers, b'{"repository": {"id": "537845873"}}').repository_id == "537845873"


@pytest.mark.parametrize("body", [b"{not json", b'{"repository": {"id": 1}', b"\xff\xfe\x00", b"   "])
def test_organization_hook_with_malformed_json_is_refused_with_400(body: bytes) -> None:
    headers, _ = org_hook("push.1.json")
    error = rejected(headers, body)
    assert error.status_code == 400
    assert "JSON" in error.detail


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000, b"payload=" + b"%5B" * 100_000])
def test_organization_hook_with_json_nested_too_deeply_is_refused_with_400(body: bytes) -> None:
    """json.loads raises RecursionError, not ValueError, on deep nesting: it once became a 500 (found by fuzzing)."""
    headers, _ = org_hook("push.1.json")
    if body.startswith(b"payload="):
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    error = rejected(headers, body)
    assert error.status_code == 400
    assert "nested too deeply" in error.detail
    assert repository_in_body(body) == ("", "")


@pytest.mark.parametrize("missing", ["X-GitHub-Delivery", "X-GitHub-Event"])
def test_request_without_github_headers_is_refused_with_400(missing: str) -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    del headers[missing]
    error = rejected(headers, body)
    assert error.status_code == 400
    assert missing in error.detail
    headers[missing] = "  "
    assert rejected(headers, body).status_code == 400


def test_empty_body_is_refused_with_400() -> None:
    headers, _, _ = github_request(FIXTURES / "push.0.json")
    assert rejected(headers, b"").status_code == 400


def test_header_names_are_case_insensitive() -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json", delivery_id="d-7")
    event = parse({k.lower(): v for k, v in headers.items()}, body, Watchlist.parse(HELLO_WORLD_ID))
    assert (event.repository_id, event.delivery_id, event.event_type) == (HELLO_WORLD_ID, "d-7", "push")


def test_only_github_signature_content_type_and_user_agent_headers_are_relayed() -> None:
    _, body, _ = github_request(FIXTURES / "push.0.json")
    received = [
        ("host", "hooks.example.com"),
        ("user-agent", "GitHub-Hookshot/044aadd"),
        ("content-length", str(len(body))),
        ("accept", "*/*"),
        ("authorization", "Bearer s3cr3t"),
        ("Cookie", "session=abc"),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("X-GITHUB-EVENT", "push"),
        ("x-github-hook-id", "292430182"),
        ("x-forwarded-for", "140.82.115.1"),
        ("x-github-hook-installation-target-type", "repository"),
        ("x-github-hook-installation-target-id", HELLO_WORLD_ID),
        ("x-hub-signature", "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6"),
        ("x-hub-signature-256", "sha256=d57c68ca6f92289e6987922ff26938930f6e66a2d161ef06abdf1859230aa23c"),
        ("content-type", "application/json"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ]
    event = parse(received, body)
    assert event.headers == (
        ("User-Agent", "GitHub-Hookshot/044aadd"),
        ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Hook-ID", "292430182"),
        ("X-GitHub-Hook-Installation-Target-Type", "repository"),
        ("X-GitHub-Hook-Installation-Target-ID", HELLO_WORLD_ID),
        ("X-Hub-Signature", "sha1=7d38cdd689735b008b3c702edd92eea23791c5f6"),
        ("X-Hub-Signature-256", "sha256=d57c68ca6f92289e6987922ff26938930f6e66a2d161ef06abdf1859230aa23c"),
        ("Content-Type", "application/json"),
    )
    assert event.header("authorization") is None
    assert "s3cr3t" not in repr(event)


# ---- the body: a JSON object, as JSON or as the payload field of a form --------------------------------


@pytest.mark.parametrize("content_type", [None, "", "application/json", "Application/JSON; charset=utf-8"])
def test_a_json_body_is_the_payload(content_type: str | None) -> None:
    """A missing Content-Type counts as JSON: the original's gRPC clients push events without one."""
    body = (FIXTURES / "push.0.json").read_bytes()
    assert webhook_payload(body, content_type) == json.loads(body)


@pytest.mark.parametrize("content_type", [FORM, f"{FORM}; charset=utf-8", FORM.upper()])
def test_a_form_body_carries_the_payload_in_its_payload_field(content_type: str) -> None:
    body = (FIXTURES / "push.0.json").read_bytes()
    assert webhook_payload(as_form(body), content_type) == json.loads(body)
    # Non-ASCII text percent-encoded as UTF-8; another field beside it is tolerated.
    form = urlencode([("payload", '{"zen": "ça va ✓"}'), ("other", "x")]).encode()
    assert webhook_payload(form, content_type) == {"zen": "ça va ✓"}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"hello", "body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b'{"repository": {"id": 1', "body is not valid JSON (it ends too soon: truncated?)"),
        (b"{} {}", "body is not valid JSON: Extra data"),
        (b"[1,2]", "body is a JSON array, not the JSON object of a GitHub payload"),
        (b'"hello"', "body is a JSON string, not"),
        (b"42", "body is a JSON number, not"),
        (b"false", "body is JSON true or false, not"),
        (b"null", "body is JSON null, not"),
        (b'{"zen": "\xe9"}', "body is not JSON in UTF-8: invalid continuation byte at byte 9"),
        ('{"zen": "ça"}'.encode("utf-16"), "body is not JSON in UTF-8"),
        (b"\xef\xbb\xbf{}", "body is not valid JSON"),
        (b'{"id": NaN}', "body is not valid JSON: NaN is not JSON"),
        (b'{"id": ' + b"9" * 5000 + b"}", "body is not valid JSON: Exceeds the limit"),
        (b"[" * 100_000, "body is not a GitHub payload: JSON nested too deeply"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_refused_with_400_saying_why(body: bytes, detail: str) -> None:
    error = payload_refusal(body)
    assert error.status_code == 400
    assert error.detail.startswith(detail), error.detail


@pytest.mark.parametrize(
    ("form", "detail"),
    [
        (b"data=%7B%7D", "form-encoded body without a payload field"),
        (b"payload={}&payload={}", "form-encoded body with 2 payload fields"),
        (b"a=1&" * 100, "form-encoded body not understood"),
        ('payload={"zen": "ça"}'.encode(), "form-encoded body is not URL-encoded: byte 17 is not ASCII"),
        (b"payload=", "the payload field of the form is not valid JSON"),
        (b"payload=%7Bnot+json", "the payload field of the form is not valid JSON"),
        (b"payload=%5B1%2C2%5D", "the payload field of the form is a JSON array, not"),
        (b"payload=%22x%22", "the payload field of the form is a JSON string, not"),
        (b"payload=%7B%22zen%22%3A%22%E9%22%7D", "the payload field of the form is not JSON in UTF-8"),
        (b"payload=" + b"%5B" * 100_000, "the payload field of the form is not a GitHub payload: JSON nested"),
        (b'{"repository": {"id": 1}}', "form-encoded body without a payload field"),
    ],
)
def test_a_form_that_is_not_githubs_is_refused_with_400_saying_why(form: bytes, detail: str) -> None:
    error = payload_refusal(form, FORM)
    assert error.status_code == 400
    assert error.detail.startswith(detail), error.detail


@pytest.mark.parametrize(
    "content_type", ["text/plain", "multipart/form-data; boundary=x", "application/xml", "application/json-seq", ";"]
)
def test_another_content_type_is_refused_with_415_naming_the_two_accepted(content_type: str) -> None:
    error = payload_refusal(b"{}", content_type)
    assert error.status_code == 415
    assert repr(content_type) in error.detail
    assert "application/json" in error.detail and "application/x-www-form-urlencoded" in error.detail


def test_organization_hook_of_another_content_type_is_refused_with_415() -> None:
    headers, body = org_hook("push.1.json")
    headers["Content-Type"] = "text/plain"
    assert rejected(headers, body).status_code == 415


def test_form_encoded_repository_hook_learns_the_name_from_its_payload() -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    headers["Content-Type"] = FORM
    event = parse_webhook(
        {k.lower(): v for k, v in headers.items()}, list(headers.items()), as_form(body), EVERYTHING, RECEIVED_NS, {}
    )
    assert (event.repository_id, event.repository_name) == (HELLO_WORLD_ID, "Codertocat/Hello-World")
    assert event.body == as_form(body)
    assert event.header("content-type") == FORM


def test_the_repository_in_a_body_that_is_not_a_payload_is_none() -> None:
    body = (FIXTURES / "push.0.json").read_bytes()
    assert repository_in_body(body) == (HELLO_WORLD_ID, "Codertocat/Hello-World")
    assert repository_in_body(body, None) == (HELLO_WORLD_ID, "Codertocat/Hello-World")
    assert repository_in_body(as_form(body), FORM) == (HELLO_WORLD_ID, "Codertocat/Hello-World")
    assert repository_in_body(body, "text/plain") == ("", "")
    assert repository_in_body(body, FORM) == ("", "")
    assert repository_in_body(b'[{"repository": {"id": 1}}]') == ("", "")
