"""Webhook ingest and the HTTP API, against a real server process on loopback."""

from __future__ import annotations

import json
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitstafette import __version__
from tests.utils import FIXTURES, ServerProcess, github_request, running_server

HELLO_WORLD_ID = "186853002"  # Codertocat/Hello-World in the fixtures
OCTOCODERS_ID = "186853261"  # Octocoders/Hello-World (ping.0.json)
MAX_BODY = 64 * 1024
SOCKET_TIMEOUT_S = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: watches the fixtures' repositories by id, takes bodies up to 64 KiB."""
    store = tmp_path_factory.mktemp("ingest") / "events.db"
    watched = f"{HELLO_WORLD_ID},{OCTOCODERS_ID}"
    with running_server(
        "--store", f"sqlite:///{store}", "--repositories", watched, "--max-body-size", "64KiB"
    ) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT_S) as http:
        yield http


def post(client: httpx.Client, fixture: str | Path, **overrides: str) -> tuple[httpx.Response, dict[str, str]]:
    headers, body, _ = github_request(FIXTURES / fixture)
    headers.update(overrides)
    return client.post("/v1/github/", headers=headers, content=body), headers


def as_org_hook(headers: dict[str, str]) -> dict[str, str]:
    """What an organization hook sends: the target is the organization, the repository is in the body."""
    headers = dict(headers)
    headers["X-GitHub-Hook-Installation-Target-Type"] = "organization"
    headers["X-GitHub-Hook-Installation-Target-ID"] = "38302899"
    return headers


# ---- raw HTTP/1.1 over a socket: to send less than declared, or a body in pieces ----------------


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=SOCKET_TIMEOUT_S)
    return sock


def request_head(server: ServerProcess, headers: dict[str, str]) -> bytes:
    lines = ["POST /v1/github/ HTTP/1.1", f"Host: 127.0.0.1:{server.http_port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (what starlette sends for these answers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def assert_closed_by_server(sock: socket.socket) -> None:
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return
    assert rest == b"", f"more data after the response: {rest!r}"


# ---- accepted --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["push.0.json", "create.0.json", "pull_request.opened.0.json", "ping.0.json"])
def test_github_payload_is_stored_with_201_and_listed(client: httpx.Client, fixture: str) -> None:
    response, headers = post(client, fixture)
    assert response.status_code == 201, response.text
    answer = response.json()
    repository_id = headers["X-GitHub-Hook-Installation-Target-ID"]
    assert answer["delivery_id"] == headers["X-GitHub-Delivery"]
    assert answer["repository_id"] == repository_id
    assert answer["sequence"] >= 1

    listed = client.get(f"/v1/events/{repository_id}").json()
    [stored] = [e for e in listed["events"] if e["delivery_id"] == headers["X-GitHub-Delivery"]]
    assert stored["sequence"] == answer["sequence"]
    assert stored["event"] == headers["X-GitHub-Event"]
    assert stored["body_bytes"] == (FIXTURES / fixture).stat().st_size


def test_same_delivery_again_gets_204(client: httpx.Client) -> None:
    first, headers = post(client, "push.0.json")
    assert first.status_code == 201
    again, _ = post(client, "push.1.json", **{"X-GitHub-Delivery": headers["X-GitHub-Delivery"]})
    assert again.status_code == 204
    assert again.content == b""

    listed = client.get(f"/v1/events/{HELLO_WORLD_ID}").json()
    assert [e["delivery_id"] for e in listed["events"]].count(headers["X-GitHub-Delivery"]) == 1


def test_sequences_increase_by_one_per_repository(client: httpx.Client) -> None:
    answers = [post(client, name)[0].json() for name in ("push.0.json", "ping.0.json", "push.1.json", "ping.0.json")]
    hello = [a["sequence"] for a in answers if a["repository_id"] == HELLO_WORLD_ID]
    octo = [a["sequence"] for a in answers if a["repository_id"] == OCTOCODERS_ID]
    assert hello[1] == hello[0] + 1
    assert octo[1] == octo[0] + 1


@pytest.mark.parametrize("path", ["/v1/github/", "/v1/github"])
def test_both_webhook_paths_accept(client: httpx.Client, path: str) -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    response = client.post(path, headers=headers, content=body)
    assert response.status_code == 201, response.text


def test_organization_hook_is_routed_by_the_repository_in_its_body(client: httpx.Client) -> None:
    headers, body, _ = github_request(FIXTURES / "push.1.json")
    response = client.post("/v1/github/", headers=as_org_hook(headers), content=body)
    assert response.status_code == 201, response.text
    assert response.json()["repository_id"] == HELLO_WORLD_ID


def test_form_encoded_organization_hook_is_accepted(client: httpx.Client) -> None:
    headers, body, _ = github_request(FIXTURES / "push.1.json")
    headers = as_org_hook(headers)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    form = urlencode({"payload": body.decode()})
    response = client.post("/v1/github/", headers=headers, content=form)
    assert response.status_code == 201, response.text
    assert response.json()["repository_id"] == HELLO_WORLD_ID


def test_body_of_exactly_the_limit_is_accepted(client: httpx.Client) -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    body = body.rstrip() + b" " * (MAX_BODY - len(body.rstrip()))
    assert len(body) == MAX_BODY
    response = client.post("/v1/github/", headers=headers, content=body)
    assert response.status_code == 201, response.text


# ---- refused ---------------------------------------------------------------------------------------


def test_unwatched_repository_gets_406(client: httpx.Client) -> None:
    response, _ = post(client, "push.0.json", **{"X-GitHub-Hook-Installation-Target-ID": "537845873"})
    assert response.status_code == 406
    assert "537845873" in response.json()["detail"]


@pytest.mark.parametrize("fixture", ["organization.member_added.0.json", "installation.created.1.json"])
def test_organization_hook_without_a_repository_gets_406(client: httpx.Client, fixture: str) -> None:
    response, headers = post(client, fixture)
    assert headers["X-GitHub-Hook-Installation-Target-Type"] == "organization"
    assert response.status_code == 406


def test_malformed_json_of_an_organization_hook_gets_400(client: httpx.Client) -> None:
    headers, _, _ = github_request(FIXTURES / "push.1.json")
    response = client.post("/v1/github/", headers=as_org_hook(headers), content=b'{"repository": {"id": 1')
    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


@pytest.mark.parametrize("missing", ["X-GitHub-Delivery", "X-GitHub-Event"])
def test_missing_github_header_gets_400(client: httpx.Client, missing: str) -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    del headers[missing]
    response = client.post("/v1/github/", headers=headers, content=body)
    assert response.status_code == 400
    assert missing in response.json()["detail"]


def test_empty_body_gets_400(client: httpx.Client) -> None:
    headers, _, _ = github_request(FIXTURES / "push.0.json")
    response = client.post("/v1/github/", headers=headers, content=b"")
    assert response.status_code == 400


@pytest.mark.parametrize("path", ["/v1/github/", "/v1/github"])
def test_get_on_the_webhook_path_gets_405(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 405


def test_body_over_the_limit_gets_413(client: httpx.Client) -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    response = client.post("/v1/github/", headers=headers, content=body + b" " * (MAX_BODY - len(body) + 1))
    assert response.status_code == 413


def test_declared_length_over_the_limit_gets_413_before_the_body_is_sent(server: ServerProcess) -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    headers["Content-Length"] = str(50 * 1000 * 1000)
    with connect(server) as sock:
        sock.sendall(request_head(server, headers) + body[:16])
        # 16 of 50,000,000 bytes sent: the answer comes now, not after a body the server would wait for.
        status, response_headers, content = read_response(sock)
        assert status == 413
        assert response_headers.get("connection") == "close"
        assert json.loads(content)["status"] == 413
        assert_closed_by_server(sock)


def test_chunked_body_growing_past_the_limit_gets_413_before_it_ends(server: ServerProcess) -> None:
    headers, _, _ = github_request(FIXTURES / "push.0.json")
    headers["Transfer-Encoding"] = "chunked"
    chunk = b"x" * (16 * 1024)
    with connect(server) as sock:
        sock.sendall(request_head(server, headers))
        sent = 0
        while sent <= MAX_BODY:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        # The last chunk (which would end the body) is never sent.
        status, response_headers, _ = read_response(sock)
        assert status == 413
        assert response_headers.get("connection") == "close"
        assert_closed_by_server(sock)


def test_server_survives_bad_requests_and_never_answers_5xx(server: ServerProcess) -> None:
    headers, body, _ = github_request(FIXTURES / "push.0.json")
    statuses = []
    with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT_S) as http:
        bad_requests = [
            ({}, body),
            ({"Content-Type": "application/json"}, b"{}"),
            ({**headers, "X-GitHub-Delivery": ""}, body),
            ({**as_org_hook(headers)}, b"\xff\xfe garbage"),
            ({**as_org_hook(headers)}, b"[1, 2, 3]"),
            ({**as_org_hook(headers)}, b'{"repository": null}'),
            ({**as_org_hook(headers)}, b"[" * 60_000),  # json.loads: RecursionError, once a 500
            ({**as_org_hook(headers), "Content-Type": "application/x-www-form-urlencoded"}, b"%%%&&&==="),
            ({**as_org_hook(headers), "Content-Type": "application/x-www-form-urlencoded"}, b"a=1&" * 100),
            ({**headers, "X-GitHub-Hook-Installation-Target-ID": "not-a-number"}, body),
            ({**headers, "X-GitHub-Delivery": str(uuid.uuid4()), "Content-Type": "text/plain; charset=nonsense"}, body),
        ]
        for extra, content in bad_requests:
            statuses.append(http.post("/v1/github/", headers=extra, content=content).status_code)
        statuses.append(http.post("/v1/github/", headers=headers, content=b"x" * (MAX_BODY + 1)).status_code)
        statuses.append(http.put("/v1/github/", headers=headers, content=body).status_code)
        statuses.append(http.get("/v1/events/nobody/nothing").status_code)
        statuses.append(http.get("/v1/events/999").status_code)
    with connect(server) as sock:  # a sender that goes away in the middle of its body
        sock.sendall(request_head(server, {**headers, "Content-Length": str(len(body))}) + body[:100])
    with connect(server) as sock:  # a request line that is not HTTP
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        sock.recv(65536)

    assert all(status < 500 for status in statuses), statuses
    with httpx.Client(base_url=server.url, timeout=SOCKET_TIMEOUT_S) as http:
        good = http.post("/v1/github/", headers={**headers, "X-GitHub-Delivery": str(uuid.uuid4())}, content=body)
        assert good.status_code == 201, good.text
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
    assert "Traceback" not in server.log(), server.log()


# ---- the rest of the HTTP API ------------------------------------------------------------------


def test_root_greets_with_name_and_version(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.json()["name"] == "gitstafette"
    assert response.json()["version"] == __version__


def test_watchlist_lists_the_repository_ids(client: httpx.Client) -> None:
    response = client.get("/v1/watchlist")
    assert response.status_code == 200
    assert sorted(response.json()["GitHubRepositoryIDs"]) == sorted([HELLO_WORLD_ID, OCTOCODERS_ID])


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_events_of_an_unknown_repository_get_404(client: httpx.Client) -> None:
    assert client.get("/v1/events/537845873").status_code == 404


def test_events_are_listed_by_owner_and_name_too(client: httpx.Client) -> None:
    headers, body, _ = github_request(FIXTURES / "push.1.json")
    assert client.post("/v1/github/", headers=as_org_hook(headers), content=body).status_code == 201
    by_name = client.get("/v1/events/Codertocat/Hello-World").json()
    assert by_name["repository_id"] == HELLO_WORLD_ID
    assert headers["X-GitHub-Delivery"] in [e["delivery_id"] for e in by_name["events"]]
    sequences = [e["sequence"] for e in by_name["events"]]
    assert sequences == sorted(sequences)  # newest last


def received_counts(client: httpx.Client) -> Counter[str]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "gitstafette_webhooks_received_total":
                counts[sample.labels["outcome"]] += int(sample.value)
    return counts


def test_metrics_count_webhooks_by_outcome(tmp_path: Path) -> None:
    with (
        running_server(
            "--store",
            f"sqlite:///{tmp_path / 'events.db'}",
            "--repositories",
            HELLO_WORLD_ID,
            "--max-body-size",
            "64KiB",
        ) as fresh,
        httpx.Client(base_url=fresh.url, timeout=SOCKET_TIMEOUT_S) as http,
    ):
        assert sum(received_counts(http).values()) == 0
        headers, body, _ = github_request(FIXTURES / "push.0.json")
        statuses = [
            http.post("/v1/github/", headers=headers, content=body).status_code,
            http.post("/v1/github/", headers=headers, content=body).status_code,
            http.post("/v1/github", headers={**headers, "X-GitHub-Delivery": "other"}, content=body).status_code,
            post(http, "ping.0.json")[0].status_code,
            post(http, "organization.member_added.0.json")[0].status_code,
            post(http, "push.0.json", **{"X-GitHub-Event": ""})[0].status_code,
            http.post("/v1/github/", headers=headers, content=b"").status_code,
            http.post("/v1/github/", headers=headers, content=b"x" * (MAX_BODY + 1)).status_code,
        ]
        assert statuses == [201, 204, 201, 406, 406, 400, 400, 413]

        assert received_counts(http) == {
            "stored": 2,
            "duplicate": 1,
            "rejected-unwatched": 2,
            "rejected-invalid": 2,
            "too-large": 1,
        }


def test_owner_and_name_in_the_watchlist(tmp_path: Path) -> None:
    with (
        running_server(
            "--store", f"sqlite:///{tmp_path / 'events.db'}", "--repositories", "Codertocat/Hello-World"
        ) as named,
        httpx.Client(base_url=named.url, timeout=SOCKET_TIMEOUT_S) as http,
    ):
        assert http.get("/v1/watchlist").json() == {"GitHubRepositoryIDs": ["codertocat/hello-world"]}

        headers, body, _ = github_request(FIXTURES / "push.1.json")
        org = http.post("/v1/github/", headers=as_org_hook(headers), content=body)
        assert org.status_code == 201, org.text
        assert org.json()["repository_id"] == HELLO_WORLD_ID

        repo_hook, _ = post(http, "push.0.json")
        assert repo_hook.status_code == 201, repo_hook.text

        headers, body, _ = github_request(FIXTURES / "ping.0.json")  # Octocoders/Hello-World
        assert http.post("/v1/github/", headers=as_org_hook(headers), content=body).status_code == 406
        assert http.post("/v1/github/", headers=headers, content=body).status_code == 406
