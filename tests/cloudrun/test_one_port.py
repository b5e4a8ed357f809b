"""The Cloud Run setup on one port: HAProxy started as its container starts it, in front of a real server,
and every kind of request GitHub, a client and Cloud Run's probes make, through that one port only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.client.utils import PUSH, repository_of, wait_until
from tests.cloudrun.ingress import Ingress, haproxy_or_skip, one_port
from tests.grpc_clients import AckStream
from tests.security.utils import signed_request
from tests.utils import running_server

SECRET = "one-port-secret"
TIMEOUT_S = 10


@pytest.fixture
def ingress(tmp_path: Path) -> Iterator[Ingress]:
    haproxy_or_skip()
    store = f"sqlite:///{tmp_path / 'events.db'}"
    with running_server("--store", store, env={"GITSTAFETTE_WEBHOOK_SECRET": SECRET}) as server:
        with one_port(server) as proxy:
            yield proxy


def h2c() -> httpx.Client:
    """HTTP/2 over plaintext with prior knowledge, as Cloud Run forwards requests with HTTP/2 end to end."""
    return httpx.Client(http1=False, http2=True, timeout=TIMEOUT_S)


def test_webhooks_over_http1_and_h2c_signed_accepted_unsigned_refused(ingress: Ingress) -> None:
    with httpx.Client(timeout=TIMEOUT_S) as http1, h2c() as http2:
        for http, version in ((http1, "HTTP/1.1"), (http2, "HTTP/2")):
            headers, body, repository = signed_request(SECRET, PUSH)
            response = http.post(f"{ingress.url}/v1/github/", headers=headers, content=body)
            assert (response.http_version, response.status_code) == (version, 201), response.text
            again = http.post(f"{ingress.url}/v1/github/", headers=headers, content=body)
            assert again.status_code == 204  # the same delivery, recognised by the server behind the proxy

            unsigned, body, _ = signed_request(None, PUSH)
            refused = http.post(f"{ingress.url}/v1/github/", headers=unsigned, content=body)
            assert (refused.http_version, refused.status_code) == (version, 401)
            wrong, body, _ = signed_request("not-the-secret", PUSH)
            assert http.post(f"{ingress.url}/v1/github/", headers=wrong, content=body).status_code == 401

            assert http.get(f"{ingress.url}/healthz").status_code == 200
            assert http.get(f"{ingress.url}/readyz").status_code == 200
            metrics = http.get(f"{ingress.url}/metrics")
            assert metrics.status_code == 200 and "gitstafette_webhooks_received_total" in metrics.text
        # Both accepted webhooks are stored, the refused ones are not.
        events = http1.get(f"{ingress.url}/v1/events/{repository}").json()
        assert len(events["events"]) == 2, events


async def test_a_stock_grpc_client_streams_and_acknowledges_through_the_one_port(ingress: Ingress) -> None:
    repository = repository_of(PUSH)
    with httpx.Client(timeout=TIMEOUT_S) as http:

        def post() -> str:
            headers, body, _ = signed_request(SECRET, PUSH)
            assert http.post(f"{ingress.url}/v1/github/", headers=headers, content=body).status_code == 201
            return headers["X-GitHub-Delivery"]

        first = [post(), post()]
        async with AckStream(ingress.grpc_target, "one-port", [repository]) as stream:
            assert await stream.receive_and_ack(len(first)) == first
            # An event posted while the stream is open comes at once, on the same stream.
            live = post()
            assert await stream.receive_and_ack(1) == [live]

        def acknowledged() -> bool:
            events = http.get(f"{ingress.url}/v1/events/{repository}").json()["events"]
            return all(e["clients"].get("one-port", {}).get("state") == "acknowledged" for e in events)

        wait_until(acknowledged, TIMEOUT_S, "the acknowledgements sent through the proxy to be recorded")
        # A new stream of the same client id resumes after what it acknowledged.
        later = post()
        async with AckStream(ingress.grpc_target, "one-port", [repository]) as stream:
            event = await stream.next_event()
            assert event is not None and event.webhook_event.event_id == later


def test_grpc_health_and_reflection_through_the_one_port(ingress: Ingress) -> None:
    with grpc.insecure_channel(ingress.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gitstafette.v1.Gitstafette"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = reflection.ServerReflectionInfo(iter([request]), timeout=TIMEOUT_S)
        services = {service.name for service in answer.list_services_response.service}
        assert {"gitstafette.v1.Gitstafette", "grpc.health.v1.Health", "info.Info"} <= services
        # and the reflection describes the service, as grpcurl asks for it
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="gitstafette.v1.Gitstafette")
        (answer,) = reflection.ServerReflectionInfo(iter([request]), timeout=TIMEOUT_S)
        assert answer.file_descriptor_response.file_descriptor_proto
