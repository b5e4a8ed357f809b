"""The REST read API behind the admin token, and the audit trail it shows per event."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
from typer.testing import CliRunner

from gitstafette.cli.events import events_app
from tests.client.utils import wait_until
from tests.grpc_clients import AckStream
from tests.security.utils import REPO, admin_get, make_token, new_secret, post_signed, write_tokens
from tests.utils import running_server

runner = CliRunner()


async def test_read_api_needs_the_admin_token_and_shows_who_got_what(tmp_path: Path) -> None:
    jenkins = make_token("jenkins", REPO)
    tokens_file = write_tokens(tmp_path / "tokens.yaml", jenkins)
    admin, admin_file = new_secret("admin"), tmp_path / "admin-token"
    admin_file.write_text(admin + "\n")
    with running_server(
        "--store", "memory://", "--tokens-file", str(tokens_file), "--admin-token-file", str(admin_file)
    ) as server:
        first, first_id = post_signed(server, None)
        second, second_id = post_signed(server, None)
        assert first.status_code == second.status_code == 201

        for token in (None, "wrong", jenkins.value):
            for response in (
                admin_get(server, f"/v1/events/{REPO}", token),
                admin_get(server, "/v1/dead-letters", token),
                httpx.post(
                    f"{server.url}/v1/dead-letters/replay",
                    json={"client_id": "jenkins", "repository_id": REPO},
                    headers={"Authorization": f"Bearer {token}"} if token else {},
                ),
            ):
                assert response.status_code == 401, response.text
                assert "needs the admin token" in response.json()["detail"]
                assert response.headers["www-authenticate"].startswith("Bearer")
        # What tells nothing of events stays open: GitHub, probes and scrapers carry no token.
        for path in ("/", "/v1/watchlist", "/healthz", "/readyz", "/metrics"):
            assert httpx.get(f"{server.url}{path}").status_code == 200, path

        async with AckStream(server.grpc_target, "jenkins", [REPO], token=jenkins.value) as stream:
            one, two = await stream.next_event(), await stream.next_event()
            assert one is not None and two is not None
            await stream.ack(one)
            await stream.fail(two, "target answered 410", 410)

            def audited() -> list[list[tuple[str, str]]]:
                listing = admin_get(server, f"/v1/events/{REPO}", admin)
                assert listing.status_code == 200, listing.text
                return [[(a["client_id"], a["action"]) for a in e["audit"]] for e in listing.json()["events"]]

            wait_until(lambda: all(len(trail) == 2 for trail in audited()), message="the audit trail")
            assert audited() == [
                [("jenkins", "sent"), ("jenkins", "acknowledged")],
                [("jenkins", "sent"), ("jenkins", "failed")],
            ]
            event = admin_get(server, f"/v1/events/{REPO}", admin).json()["events"][0]
            assert event["delivery_id"] == first_id
            assert all(isinstance(a["at"], float) and a["at"] > 1.7e9 for a in event["audit"])

            # The events command, with the token as an option and from the environment.
            refused = runner.invoke(events_app, ["list", "--server-url", server.url, "--dead-letters"])
            assert refused.exit_code == 1
            assert "401" in refused.output and "pass --admin-token or set GITSTAFETTE_ADMIN_TOKEN" in refused.output
            listed = runner.invoke(
                events_app, ["list", "--server-url", server.url, "--repository", REPO, "--admin-token", admin]
            )
            assert listed.exit_code == 0, listed.output
            assert "jenkins: acknowledged" in listed.output and "jenkins: dead-letter" in listed.output
            replayed = runner.invoke(
                events_app,
                ["replay", "--server-url", server.url, "--repository", REPO, "--client-id", "jenkins"],
                env={"GITSTAFETTE_ADMIN_TOKEN": admin},
            )
            assert replayed.exit_code == 0, replayed.output
            again = await stream.next_event()
            assert again is not None and again.replay and again.webhook_event.event_id == second_id

        # The admin token file is re-read on SIGHUP too.
        renewed = new_secret("admin-renewed")
        admin_file.write_text(renewed)
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "tokens reloaded" in server.log(), message="the reload")
        assert admin_get(server, "/v1/dead-letters", renewed).status_code == 200
        assert admin_get(server, "/v1/dead-letters", admin).status_code == 401
    for secret in (admin, renewed, jenkins.value):
        assert secret not in server.log()


def test_an_admin_token_alone_closes_the_read_api_too() -> None:
    admin = new_secret("admin")
    with running_server("--store", "memory://", env={"GITSTAFETTE_ADMIN_TOKEN": admin}) as server:
        assert post_signed(server, None)[0].status_code == 201
        assert admin_get(server, f"/v1/events/{REPO}", None).status_code == 401
        assert admin_get(server, f"/v1/events/{REPO}", admin).status_code == 200


def test_without_any_token_the_read_api_stays_open_as_before(tmp_path: Path) -> None:
    with running_server("--store", "memory://") as server:
        assert post_signed(server, None)[0].status_code == 201
        assert admin_get(server, f"/v1/events/{REPO}", None).status_code == 200
    assert "no client tokens: any gRPC client can read every repository" in server.log()
