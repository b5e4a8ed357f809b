"""A rendered pod's container run with podman as a kubelet would run it, so that an overlay's own settings
(environment, Secrets as files, volumes, security context, arguments) meet the real image; and calls into
the container's network namespace, where its ports are, without publishing them on the machine."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.deploy.conftest import ULIMITS, BuiltImage

T = TypeVar("T")
CLONE_NEWNET = 0x40000000


@dataclass
class Pod:
    """What a pod's container needs from the cluster: the rendered documents (its ConfigMaps) and the data of
    the Secrets it names (a test's own values)."""

    documents: list[dict[str, Any]]
    secrets: Mapping[str, Mapping[str, bytes]]
    workdir: Path
    #: the container's environment as the kubelet gives it, after ``environment()``
    env: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> dict[str, Any]:
        (deployment,) = [d for d in self.documents if d["kind"] == "Deployment"]
        spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.spec["containers"]
        return container

    def _config_map(self, name: str) -> dict[str, str]:
        (found,) = [d for d in self.documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        data: dict[str, str] = found["data"]
        return data

    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            env.update(self._config_map(source["configMapRef"]["name"]))
        for variable in self.container.get("env", []):
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            else:
                ref = variable["valueFrom"]["secretKeyRef"]
                env[variable["name"]] = self.secrets[ref["name"]][ref["key"]].decode()
        return env

    def _secret_volume(self, volume: dict[str, Any]) -> Path:
        """The Secret's files as the kubelet writes them: owned by root, group fsGroup, its defaultMode."""
        secret = volume["secret"]
        data = self.secrets[secret["secretName"]]
        folder = self.workdir / volume["name"]
        folder.mkdir()
        items = secret.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            path = folder / item["path"]
            path.write_bytes(data[item["key"]])
            os.chown(path, 0, self.spec["securityContext"]["fsGroup"])
            path.chmod(secret.get("defaultMode", 0o644))
        return folder

    def podman_run(self, image: BuiltImage, network: str, overrides: Mapping[str, str] = {}) -> list[str]:
        """The `podman run` arguments for the container: detached, with the pod's settings."""
        context = {**self.spec["securityContext"], **self.container["securityContext"]}
        assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
        arguments = ["run", "--detach", "--name", f"gst-pod-{uuid.uuid4().hex[:8]}", f"--network={network}"]
        arguments += [f"--user={context['runAsUser']}:{context['runAsGroup']}", f"--group-add={context['fsGroup']}"]
        arguments += ["--cap-drop=all", "--security-opt=no-new-privileges", *ULIMITS]
        if context.get("readOnlyRootFilesystem"):
            arguments += ["--read-only", "--read-only-tmpfs=false"]
        volumes = {volume["name"]: volume for volume in self.spec.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "secret" in volume:
                arguments += ["--volume", f"{self._secret_volume(volume)}:{mount['mountPath']}:ro"]
            elif "emptyDir" in volume:
                size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
                arguments += ["--tmpfs", f"{mount['mountPath']}:rw,size={size},mode=1777"]
            elif "persistentVolumeClaim" in volume:
                claim = self.workdir / volume["name"]
                claim.mkdir()
                os.chown(claim, 0, context["fsGroup"])
                claim.chmod(0o2770)  # what fsGroup makes of a volume's root
                arguments += ["--volume", f"{claim}:{mount['mountPath']}"]
            else:
                raise AssertionError(f"a volume this helper does not know: {volume}")
        self.env = {**self.environment(), **overrides}
        for name, value in self.env.items():
            arguments += ["--env", f"{name}={value}"]
        if "command" in self.container:
            arguments += ["--entrypoint", json.dumps(self.container["command"])]
        return [*arguments, image.image, *self.container.get("args", [])]

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        (found,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == name_or_number]
        return int(found)


def in_network_of(pid: int, call: Callable[[], T]) -> T:
    """``call()`` on a thread of its own that has joined the network namespace of process ``pid`` (a
    container's): the sockets it opens live there (a listening socket stays there, whichever thread serves it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with open(f"/proc/{pid}/ns/net") as namespace:
                if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            result.append(call())
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"netns-{pid}")
    thread.start()
    thread.join(60)
    if failure:
        raise failure[0]
    assert result, "timed out in the container's network"
    return result[0]


_GRPC_HEALTH = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, ca = sys.argv[1], sys.argv[2]
if ca:
    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(open(ca, "rb").read()))
else:
    channel = grpc.insecure_channel(target)
with channel:
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
"""


def grpc_health(pid: int, port: int, ca: Path | None = None) -> str:
    """The standard gRPC health of ``127.0.0.1:port`` in the network of ``pid``, as the kubelet's grpc probe
    asks it (gRPC's own threads open the sockets, so this runs in a process that nsenter put there)."""
    result = subprocess.run(
        [
            "nsenter",
            f"--net=/proc/{pid}/ns/net",
            sys.executable,
            "-c",
            _GRPC_HEALTH,
            f"127.0.0.1:{port}",
            str(ca or ""),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip() or result.stderr.strip().splitlines()[-1]
