"""Fuzzing the pure GitHub parsing (github/webhook.py, github/signature.py) with hypothesis: whatever the
headers, body and encoding, a webhook is either routed to a watched repository or refused with 400/406/415, a
body is a GitHub payload exactly when the contract says so (``expected_payload``), and a signature check answers
(never raises) without showing the secret.

Examples per test: the ``ci`` profile (tests/conftest.py); ``GITSTAFETTE_FUZZ_EXAMPLES=N`` for long runs.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st

from gitstafette.exceptions import WebhookRejected
from gitstafette.github.signature import WebhookSecrets, signature_problem
from gitstafette.github.webhook import parse_webhook, repository_in_body, webhook_payload
from gitstafette.model import Watchlist, WebhookEvent
from gitstafette.security.secret import Secret
from tests.github.strategies import (
    CONTENT_TYPES,
    HELLO_WORLD_ID,
    OCTOCODERS_ID,
    REPOSITORY_IDS,
    REPOSITORY_NAMES,
    WebhookRequest,
    bodies,
    expected_payload,
    header_values,
    webhook_requests,
)
from tests.security.utils import sign

RECEIVED_NS = 1_700_000_000_123_456_789
WATCHLISTS = (
    Watchlist.parse("*"),
    Watchlist.parse(f"{HELLO_WORLD_ID},{OCTOCODERS_ID}"),
    Watchlist.parse("Codertocat/Hello-World,42"),
)
KNOWN_NAMES = (None, {}, {HELLO_WORLD_ID: "Codertocat/Hello-World"})
SIGNATURE_PROBLEMS = (
    "missing X-Hub-Signature-256 header",
    "X-Hub-Signature-256 is not sha256=<hex>",
    "X-Hub-Signature-256 does not match the body",
)
#: secrets that cannot be mistaken for a piece of an error message
SECRETS = st.binary(min_size=8, max_size=32).map(lambda raw: "fuzz-secret-" + raw.hex())


def _relayed(name: str) -> bool:
    lower = name.lower()
    return lower in ("content-type", "user-agent") or lower.startswith(("x-github-", "x-hub-signature"))


def _parse(request: WebhookRequest, watchlist: Watchlist, known: dict[str, str] | None) -> WebhookEvent:
    return parse_webhook(request.by_name(), request.headers, request.body, watchlist, RECEIVED_NS, known)


@given(webhook_requests(), st.sampled_from(WATCHLISTS), st.sampled_from(KNOWN_NAMES))
def test_a_webhook_is_routed_to_a_watched_repository_or_refused_with_400_406_or_415(
    request: WebhookRequest, watchlist: Watchlist, known: dict[str, str] | None
) -> None:
    headers = request.by_name()
    try:
        event = _parse(request, watchlist, known)
    except WebhookRejected as exc:
        assert exc.status_code in (400, 406, 415), exc
        assert exc.detail
        if exc.status_code == 415:
            assert expected_payload(request.body, headers.get("content-type")) == 415
        return
    assert event.body is request.body
    assert event.delivery_id == headers["x-github-delivery"].strip() != ""
    assert event.event_type == headers["x-github-event"].strip() != ""
    assert event.repository_id
    assert watchlist.watches(event.repository_id, event.repository_name)
    target_type = headers.get("x-github-hook-installation-target-type", "").strip().lower()
    target_id = headers.get("x-github-hook-installation-target-id", "").strip()
    if target_type == "repository" and target_id:
        assert event.repository_id == target_id
    else:
        # Routed by its body: a GitHub payload, whose repository it is.
        assert event.repository_id.isdigit()
        payload = expected_payload(request.body, headers.get("content-type"))
        assert isinstance(payload, dict) and str(payload["repository"]["id"]) == event.repository_id
    # Only GitHub's headers, Content-Type and User-Agent travel on, in the order received, values untouched.
    assert [(n.lower(), v) for n, v in event.headers] == [(n.lower(), v) for n, v in request.headers if _relayed(n)]


@given(
    st.sampled_from(REPOSITORY_IDS),
    st.sampled_from(REPOSITORY_NAMES),
    st.sampled_from(["utf-8", "utf-16", "utf-32", "form"]),
    st.booleans(),
)
def test_the_repository_in_the_body_routes_an_organization_hook_sent_as_json_or_form(
    repository_id: str, name: str, encoding: str, as_number: bool
) -> None:
    payload = {"action": "opened", "repository": {"id": int(repository_id) if as_number else repository_id}}
    if name:
        payload["repository"]["full_name"] = name
    text = json.dumps(payload, ensure_ascii=False)
    content_type = "application/json"
    if encoding == "form":
        body, content_type = urlencode({"payload": text}).encode(), "application/x-www-form-urlencoded"
    else:
        body = text.encode(encoding)
    headers = [
        ("X-GitHub-Delivery", "d-1"),
        ("X-GitHub-Event", "pull_request"),
        ("X-GitHub-Hook-Installation-Target-Type", "organization"),
        ("Content-Type", content_type),
    ]
    if encoding in ("utf-16", "utf-32"):
        # json.loads would guess these; JSON is UTF-8 (RFC 8259), as GitHub sends it: refused, not guessed.
        try:
            _parse(WebhookRequest(headers, body), WATCHLISTS[0], None)
        except WebhookRejected as exc:
            assert exc.status_code == 400 and "not JSON in UTF-8" in exc.detail
        else:
            raise AssertionError(f"a {encoding} body was routed")
        assert repository_in_body(body, content_type) == ("", "")
        return
    event = _parse(WebhookRequest(headers, body), WATCHLISTS[0], None)
    assert (event.repository_id, event.repository_name) == (repository_id, name)
    assert event.body is body
    assert repository_in_body(body, content_type) == (repository_id, name)


@given(bodies(), st.one_of(st.sampled_from(CONTENT_TYPES), header_values(), st.none()))
def test_a_body_is_a_payload_or_refused_with_400_or_415_as_the_contract_says(
    body: bytes, content_type: str | None
) -> None:
    expected = expected_payload(body, content_type)
    try:
        payload = webhook_payload(body, content_type)
    except WebhookRejected as exc:
        assert exc.status_code == (415 if expected == 415 else 400), (exc, expected)
        assert expected is None or expected == 415, (exc, expected)
        assert exc.detail
        return
    assert isinstance(payload, dict)
    assert payload == expected


@given(bodies(), st.one_of(st.sampled_from(CONTENT_TYPES), header_values()))
def test_the_repository_in_any_body_is_digits_or_nothing(body: bytes, content_type: str) -> None:
    repository_id, name = repository_in_body(body, content_type)
    assert repository_id.isdigit() or (repository_id, name) == ("", "")
    assert isinstance(name, str)


@given(SECRETS, bodies(), bodies(), st.booleans())
def test_the_signature_of_the_body_passes_and_of_any_other_body_fails(
    secret: str, body: bytes, other: bytes, upper: bool
) -> None:
    signature = sign(secret, body)
    assert signature_problem(Secret(secret), body, signature.upper() if upper else signature) is None
    if other != body:
        problem = signature_problem(Secret(secret), other, signature)
        assert problem is not None and secret not in problem


@given(SECRETS, bodies(), st.one_of(header_values(), st.none(), st.just("sha256=")))
def test_a_signature_check_answers_in_words_without_the_secret(secret: str, body: bytes, header: str | None) -> None:
    problem = signature_problem(Secret(secret), body, header)
    # A random header is not the signature; the answer is one of three fixed sentences, so it shows neither
    # the secret nor what was sent.
    assert problem in SIGNATURE_PROBLEMS


@given(
    webhook_requests(),
    st.sampled_from(REPOSITORY_IDS),
    SECRETS,
    st.booleans(),
    st.sampled_from([None, HELLO_WORLD_ID, "Codertocat/Hello-World", "octo-org/deploy"]),
    st.booleans(),
)
def test_which_secret_applies_is_decided_without_raising(
    request: WebhookRequest, repository_id: str, secret: str, with_default: bool, keyed_by: str | None, signed: bool
) -> None:
    secrets = WebhookSecrets.build(Secret(secret) if with_default else None, {keyed_by: secret} if keyed_by else {})
    headers = request.by_name()
    signature = sign(secret, request.body) if signed else headers.get("x-hub-signature-256")
    problem = secrets.problem(repository_id, request.body, signature, headers.get("content-type", ""))
    applies_by_id = with_default or keyed_by == repository_id
    if problem is not None:
        assert secret not in problem
        # Signed with a secret that applies by id, it is refused only when owner/name secrets exist and the
        # payload does not name the repository it was routed to (which secret applies cannot be told).
        assert not (signed and applies_by_id) or (keyed_by is not None and "/" in keyed_by), problem
    elif applies_by_id:
        assert signature is not None and signature.strip().lower() == sign(secret, request.body)
