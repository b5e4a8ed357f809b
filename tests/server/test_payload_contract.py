"""What ``POST /v1/github/`` and ``WebhookEventPush`` take as a body, against real server processes: a JSON
object, sent as ``application/json`` or as the ``payload`` field of an ``application/x-www-form-urlencoded``
form (a hook with content type "form"); 400 for any other body, 415 for any other content type; the body is
judged after the signature, except where the route is in it (organization and App hooks)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import grpc
import httpx
import pytest

from tests.client.utils import RecordingTarget, running_client, wait_until
from tests.security.utils import Calls, new_secret, sign
from tests.utils import FIXTURES, ServerProcess, github_request, running_server

HELLO_WORLD_ID = "186853002"  # Codertocat/Hello-World in the fixtures
OCTOCODERS_ID = "186853261"  # Octocoders/Hello-World (ping.0.json)
FORM = "application/x-www-form-urlencoded"
SECRET = new_secret("contract")
TIMEOUT_S = 10

#: bodies that are not a GitHub payload, as JSON: (body, what the answer's detail starts with)
NOT_A_JSON_OBJECT = [
    (b"hello", "body is not valid JSON"),
    (b"[1,2]", "body is a JSON array, not the JSON object of a GitHub payload"),
    (b'"a string"', "body is a JSON string"),
    (b"42", "body is a JSON number"),
    (b'{"ref": "refs/heads/main", "repository": {"id": 186853002', "body is not valid JSON (it ends too soon"),
    (b'{"zen": "caf\xe9"}', "body is not JSON in UTF-8"),
]
#: the same for forms
NOT_A_GITHUB_FORM = [
    (urlencode({"data": '{"a": 1}'}).encode(), "form-encoded body without a payload field"),
    (urlencode({"payload": "[1,2]"}).encode(), "the payload field of the form is a JSON array"),
    (urlencode({"payload": "hello"}).encode(), "the payload field of the form is not valid JSON"),
    (b'{"repository": {"id": 186853002}}', "form-encoded body without a payload field"),
]
OTHER_CONTENT_TYPES = ["text/plain", "multipart/form-data; boundary=x", "application/xml", "text/json"]


def as_form(body: bytes) -> bytes:
    return urlencode({"payload": body.decode()}).encode()


def as_org_hook(headers: dict[str, str]) -> dict[str, str]:
    """What an organization hook sends: the target is the organization, the repository is in the body."""
    return {
        **headers,
        "X-GitHub-Hook-Installation-Target-Type": "organization",
        "X-GitHub-Hook-Installation-Target-ID": "38302899",
    }


def hook(kind: str, fixture: str = "push.0.json") -> dict[str, str]:
    """Headers of a fixture sent by a repository hook or an organization hook."""
    headers, _, _ = github_request(FIXTURES / fixture)
    return headers if kind == "repository" else as_org_hook(headers)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Watches the fixtures' repositories; no webhook secret."""
    store = tmp_path_factory.mktemp("contract") / "events.db"
    with running_server(
        "--store", f"sqlite:///{store}", "--repositories", f"{HELLO_WORLD_ID},{OCTOCODERS_ID}"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def signed_server() -> Iterator[ServerProcess]:
    """Watches every repository; one webhook secret for all."""
    with running_server("--store", "memory://", env={"GITSTAFETTE_WEBHOOK_SECRET": SECRET}) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
        yield http


def stored_deliveries(server: ServerProcess, repository_id: str = HELLO_WORLD_ID) -> list[str]:
    response = httpx.get(f"{server.url}/v1/events/{repository_id}", timeout=TIMEOUT_S)
    if response.status_code == 404:
        return []
    return [event["delivery_id"] for event in response.json()["events"]]


def assert_refused(response: httpx.Response, status: int, detail: str, server: ServerProcess, delivery: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"status": status, "detail": response.json()["detail"]}
    assert response.json()["detail"].startswith(detail), response.json()["detail"]
    assert delivery not in stored_deliveries(server)
    assert server.alive()


# ---- accepted: JSON and form, stored as sent ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["repository", "organization"])
@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
def test_a_payload_as_json_or_as_a_form_is_stored_byte_for_byte(
    client: httpx.Client, server: ServerProcess, kind: str, form: bool
) -> None:
    headers = hook(kind)
    body = (FIXTURES / "push.0.json").read_bytes()
    if form:
        headers["Content-Type"], body = FORM, as_form(body)
    response = client.post("/v1/github/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    assert response.json()["repository_id"] == HELLO_WORLD_ID
    [stored] = [
        e
        for e in client.get(f"/v1/events/{HELLO_WORLD_ID}").json()["events"]
        if e["delivery_id"] == headers["X-GitHub-Delivery"]
    ]
    assert stored["body_bytes"] == len(body)


def test_a_request_without_content_type_is_taken_as_json(client: httpx.Client, server: ServerProcess) -> None:
    """GitHub always sends one; the original's gRPC clients push events without one."""
    headers = hook("repository")
    del headers["Content-Type"]
    assert (
        client.post("/v1/github/", headers=headers, content=(FIXTURES / "push.0.json").read_bytes()).status_code == 201
    )
    headers["X-GitHub-Delivery"] = str(uuid.uuid4())
    response = client.post("/v1/github/", headers=headers, content=b"hello")
    assert_refused(response, 400, "body is not valid JSON", server, headers["X-GitHub-Delivery"])


# ---- refused: 400, 415, 406 -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["repository", "organization"])
@pytest.mark.parametrize(("body", "detail"), NOT_A_JSON_OBJECT)
def test_a_json_body_that_is_not_a_json_object_gets_400_and_is_not_stored(
    client: httpx.Client, server: ServerProcess, kind: str, body: bytes, detail: str
) -> None:
    headers = hook(kind)
    response = client.post("/v1/github/", headers=headers, content=body)
    assert_refused(response, 400, detail, server, headers["X-GitHub-Delivery"])


@pytest.mark.parametrize("kind", ["repository", "organization"])
@pytest.mark.parametrize(("body", "detail"), NOT_A_GITHUB_FORM)
def test_a_form_without_a_json_object_as_payload_gets_400_and_is_not_stored(
    client: httpx.Client, server: ServerProcess, kind: str, body: bytes, detail: str
) -> None:
    headers = {**hook(kind), "Content-Type": FORM}
    response = client.post("/v1/github/", headers=headers, content=body)
    assert_refused(response, 400, detail, server, headers["X-GitHub-Delivery"])


@pytest.mark.parametrize("kind", ["repository", "organization"])
@pytest.mark.parametrize("content_type", OTHER_CONTENT_TYPES)
def test_another_content_type_gets_415_naming_the_two_accepted(
    client: httpx.Client, server: ServerProcess, kind: str, content_type: str
) -> None:
    headers = {**hook(kind), "Content-Type": content_type}
    response = client.post("/v1/github/", headers=headers, content=(FIXTURES / "push.0.json").read_bytes())
    assert_refused(
        response, 415, f"Content-Type {content_type!r} is not supported", server, headers["X-GitHub-Delivery"]
    )
    assert "application/json or application/x-www-form-urlencoded" in response.json()["detail"]


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
@pytest.mark.parametrize("fixture", ["organization.member_added.0.json", "installation.created.1.json"])
def test_an_event_without_a_repository_gets_406_as_json_or_form(
    client: httpx.Client, server: ServerProcess, fixture: str, form: bool
) -> None:
    headers, body, repository_id = github_request(FIXTURES / fixture)
    assert repository_id == "" and headers["X-GitHub-Hook-Installation-Target-Type"] == "organization"
    if form:
        headers["Content-Type"], body = FORM, as_form(body)
    response = client.post("/v1/github/", headers=headers, content=body)
    assert_refused(response, 406, "a", server, headers["X-GitHub-Delivery"])
    assert "without a repository" in response.json()["detail"]


def test_the_server_counts_refused_bodies_as_invalid_and_keeps_serving(client: httpx.Client) -> None:
    for body, _ in NOT_A_JSON_OBJECT:
        client.post("/v1/github/", headers=hook("repository"), content=body)
    assert client.get("/readyz").status_code == 200
    assert (
        client.post(
            "/v1/github/", headers=hook("repository"), content=(FIXTURES / "push.0.json").read_bytes()
        ).status_code
        == 201
    )


# ---- the order: signature, then body (where the route is not in it) -----------------------------------


def signed(headers: dict[str, str], body: bytes, secret: str | None = SECRET) -> dict[str, str]:
    return {**headers, "X-Hub-Signature-256": sign(secret, body)} if secret else headers


def test_without_the_secret_a_repository_hook_learns_nothing_but_401(signed_server: ServerProcess) -> None:
    with httpx.Client(base_url=signed_server.url, timeout=TIMEOUT_S) as http:
        for headers, body in [
            (hook("repository"), b"hello"),
            (hook("repository"), b"[1,2]"),
            ({**hook("repository"), "Content-Type": "text/plain"}, b"{}"),
            ({**hook("repository"), "Content-Type": FORM}, b"data=1"),
        ]:
            for secret in (None, new_secret("wrong")):
                response = http.post("/v1/github/", headers=signed(headers, body, secret), content=body)
                assert response.status_code == 401, (body, response.text)
                assert response.json()["detail"].startswith("signature check failed")
            # Signed with the secret: now the sender is told what is wrong with it.
            response = http.post("/v1/github/", headers=signed(headers, body), content=body)
            assert response.status_code in (400, 415), response.text


def test_an_organization_hook_is_routed_by_its_body_so_that_is_judged_before_the_signature(
    signed_server: ServerProcess,
) -> None:
    with httpx.Client(base_url=signed_server.url, timeout=TIMEOUT_S) as http:
        response = http.post("/v1/github/", headers=hook("organization"), content=b"[1,2]")
        assert response.status_code == 400, response.text
        response = http.post(
            "/v1/github/", headers={**hook("organization"), "Content-Type": "text/plain"}, content=b"{}"
        )
        assert response.status_code == 415, response.text
        headers, body, _ = github_request(FIXTURES / "organization.member_added.0.json")
        assert http.post("/v1/github/", headers=headers, content=body).status_code == 406
        # A payload with a repository: then the signature decides.
        body = (FIXTURES / "push.0.json").read_bytes()
        assert http.post("/v1/github/", headers=hook("organization"), content=body).status_code == 401
        assert http.post("/v1/github/", headers=signed(hook("organization"), body), content=body).status_code == 201


# ---- WebhookEventPush: the same body rule ---------------------------------------------------------------


async def test_webhook_event_push_follows_the_same_body_rule(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        calls = Calls(channel, None)
        for body, detail in NOT_A_JSON_OBJECT:
            headers = hook("repository")
            answer = await calls.push_response(HELLO_WORLD_ID, body, headers)
            assert (answer.response_code, answer.accepted) == ("400", False), answer
            assert answer.response_description.startswith(detail)
        for body, detail in NOT_A_GITHUB_FORM:
            answer = await calls.push_response(HELLO_WORLD_ID, body, {**hook("repository"), "Content-Type": FORM})
            assert (answer.response_code, answer.accepted) == ("400", False), answer
            assert answer.response_description.startswith(detail)
        answer = await calls.push_response(HELLO_WORLD_ID, b"{}", {**hook("repository"), "Content-Type": "text/plain"})
        assert (answer.response_code, answer.accepted) == ("415", False), answer

        form_headers = {**hook("repository"), "Content-Type": FORM}
        answer = await calls.push_response(
            HELLO_WORLD_ID, as_form((FIXTURES / "push.0.json").read_bytes()), form_headers
        )
        assert (answer.response_code, answer.accepted) == ("201", True), answer
        assert form_headers["X-GitHub-Delivery"] in stored_deliveries(server)
    assert server.alive()


# ---- a form-encoded webhook, signed, through server and client to the target ----------------------------


def test_a_signed_form_encoded_webhook_reaches_the_target_byte_for_byte(
    tmp_path: Path, target: RecordingTarget
) -> None:
    """The signature covers the form as sent; a client holding the secret checks it again before delivering."""
    headers, json_body, _ = github_request(FIXTURES / "push.1.json")
    headers = as_org_hook(headers)
    body = as_form(json_body)
    headers["Content-Type"] = FORM
    headers["X-Hub-Signature-256"] = sign(SECRET, body)
    env = {"GITSTAFETTE_WEBHOOK_SECRET": SECRET}
    with (
        running_server(
            "--store", f"sqlite:///{tmp_path / 'events.db'}", "--repositories", "Codertocat/Hello-World", env=env
        ) as relay,
        running_client(relay, ["Codertocat/Hello-World"], target.url, "form-client", env=env) as client,
    ):
        client.wait_connected()
        response = httpx.post(f"{relay.url}/v1/github/", headers=headers, content=body, timeout=TIMEOUT_S)
        assert response.status_code == 201, response.text
        assert response.json()["repository_id"] == HELLO_WORLD_ID
        wait_until(lambda: target.delivered(), message="the form-encoded webhook at the target")

        [received] = target.delivered()
        assert received.body == body
        assert received.header("Content-Type") == FORM
        assert received.header("X-Hub-Signature-256") == headers["X-Hub-Signature-256"]
        assert received.header("X-GitHub-Delivery") == headers["X-GitHub-Delivery"]
        assert client.metric("gitstafette_client_events_settled_total", outcome="delivered") == 1
