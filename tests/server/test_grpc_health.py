"""Standard gRPC services: health, reflection, and the original's Info."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gitstafette import __version__
from gitstafette._proto import gitstafette_info_pb2 as info_pb
from gitstafette._proto import gitstafette_info_pb2_grpc as info_grpc
from tests.utils import ServerProcess


async def test_health_says_serving(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "gitstafette.v1.Gitstafette"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
        names = {service.name for service in response.list_services_response.service}
    assert {"gitstafette.v1.Gitstafette", "info.Info", "grpc.health.v1.Health"} <= names


async def test_info_describes_the_server(server: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        answer = await info_grpc.InfoStub(channel).GetInfo(info_pb.GetInfoRequest(client_id="probe"))
    assert answer.alive and answer.instance_type == info_pb.SERVER
    assert answer.version == __version__
    assert answer.server.port == str(server.grpc_port)
    assert answer.server.repositories == "*"
