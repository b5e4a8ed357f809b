"""Client tokens on the gRPC API: who may call, which repositories each token reads, whose cursors move,
reloading on SIGHUP, the original's OAUTH_TOKEN, and the cap on streams per client id."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gitstafette._proto import gitstafette_info_pb2 as info_pb
from gitstafette._proto import gitstafette_info_pb2_grpc as info_grpc
from gitstafette._proto import gitstafette_pb2 as pb
from tests.client.utils import wait_until
from tests.grpc_clients import AckStream
from tests.security.utils import (
    OTHER,
    REPO,
    REPO_NAME,
    Calls,
    Token,
    admin_get,
    make_token,
    new_secret,
    post_signed,
    signed_request,
    write_tokens,
)
from tests.utils import ServerProcess, running_server

DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
OK = grpc.StatusCode.OK


@dataclass
class Secured:
    server: ServerProcess
    tokens_file: Path
    admin: str
    jenkins: Token
    tekton: Token
    by_name: Token
    everything: Token


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    """A server with a tokens file (YAML) and an admin token, holding an event of REPO and one of OTHER."""
    jenkins, tekton = make_token("jenkins", REPO), make_token("tekton", OTHER)
    by_name, everything = make_token("named", REPO_NAME), make_token("ops", "*")
    tokens_file = write_tokens(tmp_path / "tokens.yaml", jenkins, tekton, by_name, everything)
    admin = new_secret("admin")
    with running_server(
        "--store", "memory://", "--tokens-file", str(tokens_file), env={"GITSTAFETTE_ADMIN_TOKEN": admin}
    ) as server:
        for repository_id in (REPO, OTHER):
            assert post_signed(server, None, repository_id=repository_id)[0].status_code == 201
        yield Secured(server, tokens_file, admin, jenkins, tekton, by_name, everything)


async def test_no_token_or_an_unknown_one_is_unauthenticated_on_every_rpc(secured: Secured) -> None:
    headers, body, _ = signed_request(None)
    async with grpc.aio.insecure_channel(secured.server.grpc_target) as channel:
        for token in (None, "not-a-token", ""):
            calls = Calls(channel, token)
            assert await calls.fetch(REPO) == UNAUTHENTICATED
            assert await calls.stream(REPO) == UNAUTHENTICATED
            assert await calls.push(REPO, body, headers) == UNAUTHENTICATED
            assert await calls.status(REPO) == UNAUTHENTICATED
            assert await calls.statuses() == UNAUTHENTICATED
        # Not a bearer token at all.
        stub_calls = Calls(channel, None)
        stub_calls.metadata = (("authorization", f"Basic {secured.jenkins.value}"),)
        assert await stub_calls.status(REPO) == UNAUTHENTICATED
    # The refusals are logged by the server's process: read its log once the lines have arrived.
    wanted = ("refused StreamWebhookEvents: no token", "refused WebhookEventStatus: unknown token")
    wait_until(lambda: all(line in secured.server.log() for line in wanted), message="the refusals logged")


async def test_a_token_reading_a_repository_outside_its_list_is_permission_denied(secured: Secured) -> None:
    headers, body, _ = signed_request(None, repository_id=OTHER)
    async with grpc.aio.insecure_channel(secured.server.grpc_target) as channel:
        jenkins = Calls(channel, secured.jenkins.value)
        assert await jenkins.fetch(OTHER) == DENIED
        assert await jenkins.stream(OTHER) == DENIED
        assert await jenkins.push(OTHER, body, headers) == DENIED
        assert await jenkins.status(OTHER) == DENIED
        # A repository that does not exist is refused the same way: a token learns nothing of it.
        assert await jenkins.status("424242") == DENIED
        # Statuses name no repository: a token sees its own repositories, and only those.
        assert [s.repository_id for s in await jenkins.statuses_list()] == [REPO]

        assert await jenkins.fetch(REPO) == OK
        assert await jenkins.stream(REPO) == OK
        assert await jenkins.status(REPO) == OK
        assert await jenkins.push(REPO, *reversed(signed_request(None, repository_id=REPO)[:2])) == OK

        # Granted by owner/name, asked by id (the server knows the name from the stored webhook).
        named = Calls(channel, secured.by_name.value)
        assert await named.fetch(REPO) == OK
        assert await named.stream(REPO_NAME) == OK
        assert await named.fetch(OTHER) == DENIED
        assert {s.repository_id for s in await Calls(channel, secured.everything.value).statuses_list()} == {
            REPO,
            OTHER,
        }


async def test_info_health_and_reflection_stay_open(secured: Secured) -> None:
    async with grpc.aio.insecure_channel(secured.server.grpc_target) as channel:
        info = await info_grpc.InfoStub(channel).GetInfo(info_pb.GetInfoRequest())
        assert info.alive
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for response in call for s in response.list_services_response.service]
        assert "gitstafette.v1.Gitstafette" in services


async def test_the_tokens_client_id_is_used_whatever_the_request_claims(secured: Secured) -> None:
    async with AckStream(secured.server.grpc_target, "impostor", [REPO], token=secured.jenkins.value) as stream:
        event = await stream.next_event()
        assert event is not None
        await stream.ack(event)

        def cursors() -> dict[str, int]:
            response = admin_get(secured.server, f"/v1/events/{REPO}", secured.admin)
            response.raise_for_status()
            result: dict[str, int] = response.json()["cursors"]
            return result

        assert wait_until(lambda: cursors().get("jenkins") == 1, message="jenkins's cursor")
        assert "impostor" not in cursors()
        listing = admin_get(secured.server, f"/v1/events/{REPO}", secured.admin).json()
        audit = [(a["client_id"], a["action"]) for a in listing["events"][0]["audit"]]
        assert audit == [("jenkins", "sent"), ("jenkins", "acknowledged")]

    async with grpc.aio.insecure_channel(secured.server.grpc_target) as channel:
        # The status of "impostor" is that of jenkins: nothing pending.
        [status] = await Calls(channel, secured.jenkins.value).statuses_list(client_id="impostor")
        assert (status.repository_id, status.count, status.status) == (REPO, 0, "OK")


async def test_sighup_reloads_tokens_without_dropping_a_healthy_stream(secured: Secured, tmp_path: Path) -> None:
    server = secured.server
    newcomer = make_token("newcomer", REPO)
    async with (
        AckStream(server.grpc_target, "jenkins", [REPO], token=secured.jenkins.value) as healthy,
        AckStream(server.grpc_target, "tekton", [OTHER], token=secured.tekton.value) as doomed,
        AckStream(server.grpc_target, "named", [REPO_NAME], token=secured.by_name.value) as narrowed,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        for stream in (healthy, doomed, narrowed):
            assert await stream.next_event() is not None  # the event posted by the fixture
        # The original stream too: tekton's FetchWebhookEvents, open until the client leaves.
        legacy = Calls(channel, secured.tekton.value).stub.FetchWebhookEvents(
            pb.WebhookEventsRequest(client_id="tekton", repository_id=OTHER),
            metadata=(("authorization", f"Bearer {secured.tekton.value}"),),
        )
        assert len((await legacy.read()).webhook_events) == 1
        assert await Calls(channel, newcomer.value).status(REPO) == UNAUTHENTICATED

        # tekton's token goes, named's now reads only OTHER, a newcomer arrives.
        write_tokens(
            secured.tokens_file,
            secured.jenkins,
            Token(secured.by_name.value, "named", (OTHER,)),
            newcomer,
            secured.everything,
        )
        assert server.process is not None
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "tokens reloaded" in server.log(), message="the reload")

        assert await Calls(channel, newcomer.value).status(REPO) == OK
        assert await Calls(channel, secured.tekton.value).status(OTHER) == UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as revoked:
            await doomed.next_event(timeout=5)
        assert revoked.value.code() == UNAUTHENTICATED
        assert "revoked" in (revoked.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as legacy_revoked:
            await asyncio.wait_for(legacy.read(), 5)
        assert legacy_revoked.value.code() == UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as narrowed_error:
            await narrowed.next_event(timeout=5)
        assert narrowed_error.value.code() == DENIED

        # The healthy stream goes on: a new event reaches it.
        response, delivery_id = post_signed(server, None, repository_id=REPO)
        assert response.status_code == 201
        event = await healthy.next_event()
        assert event is not None and event.webhook_event.event_id == delivery_id
    assert "3 ended" in server.log()


async def test_a_broken_tokens_file_on_reload_keeps_the_tokens_in_use(secured: Secured) -> None:
    secured.tokens_file.write_text(f"tokens:\n  - sha256: {secured.jenkins.value}\n    client_id: x\n")
    assert secured.server.process is not None
    secured.server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in secured.server.log(), message="the refused reload")
    assert "entry 1: sha256 is not the 64 hex digits of a SHA-256" in secured.server.log()
    assert secured.jenkins.value not in secured.server.log()
    async with grpc.aio.insecure_channel(secured.server.grpc_target) as channel:
        assert await Calls(channel, secured.jenkins.value).status(REPO) == OK


async def test_oauth_token_alone_reads_every_repository_as_the_client_id_the_request_names() -> None:
    oauth = new_secret("oauth")
    with running_server("--store", "memory://", env={"OAUTH_TOKEN": oauth}) as server:
        for repository_id in (REPO, OTHER):
            assert post_signed(server, None, repository_id=repository_id)[0].status_code == 201
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            assert await Calls(channel, None).fetch(REPO) == UNAUTHENTICATED
            calls = Calls(channel, oauth)
            assert len(await calls.fetch_all(REPO, client_id="legacy")) == 1
            assert len(await calls.fetch_all(OTHER, client_id="legacy")) == 1
            statuses = {s.repository_id: s.count for s in await calls.statuses_list(client_id="legacy")}
            assert statuses == {REPO: 0, OTHER: 0}  # FetchWebhookEvents moved the cursors of "legacy"
            assert {s.count for s in await calls.statuses_list(client_id="another")} == {1}
        # No admin token: the read API is closed, and says why.
        closed = admin_get(server, f"/v1/events/{REPO}", oauth)
        assert closed.status_code == 403 and "no admin token" in closed.json()["detail"]


async def test_a_client_id_gets_at_most_max_streams_per_client(tmp_path: Path) -> None:
    token = make_token("jenkins", REPO)
    tokens_file = write_tokens(tmp_path / "tokens.toml", token)
    with running_server(
        "--store", "memory://", "--tokens-file", str(tokens_file), "--max-streams-per-client", "2"
    ) as server:
        assert post_signed(server, None)[0].status_code == 201
        first = AckStream(server.grpc_target, "jenkins", [REPO], token=token.value)
        second = AckStream(server.grpc_target, "jenkins", [REPO], token=token.value)
        async with first, second:
            await first.next_event(timeout=1)
            await second.next_event(timeout=1)
            async with grpc.aio.insecure_channel(server.grpc_target) as channel:
                calls = Calls(channel, token.value)
                assert await calls.stream(REPO) == grpc.StatusCode.RESOURCE_EXHAUSTED
                # The limit is per client id: the claimed id changes nothing, the token's is used.
                assert await calls.stream(REPO, client_id="someone-else") == grpc.StatusCode.RESOURCE_EXHAUSTED
                await first.close()
                await asyncio.sleep(0.2)
                assert await calls.stream(REPO) == OK
    assert "already has 2 streams open" not in server.log()  # the message goes to the caller, the log says less
    assert "stream refused, it has 2 open already" in server.log()
