from __future__ import annotations

import httpx

from tests.utils import ServerProcess, fixture_files, github_request


def test_webhook_is_stored_then_listed(server: ServerProcess) -> None:
    headers, body, repository_id = github_request(fixture_files()[0])
    response = httpx.post(f"{server.url}/v1/github/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    listed = httpx.get(f"{server.url}/v1/events/{repository_id}").json()
    assert [e["delivery_id"] for e in listed["events"]] == [headers["X-GitHub-Delivery"]]
