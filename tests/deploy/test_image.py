"""The image, really built (scripts/build-image.sh) and really run with podman the way a hardened pod runs it:
its own user (no --user given), a read-only root with only its declared volumes writable, no capabilities,
no privilege escalation; tini as PID 1 passing SIGTERM on to the server."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gitstafette
from tests.client.utils import PUSH, RecordingTarget, wait_until
from tests.deploy.conftest import ULIMITS, BuiltImage
from tests.deploy.pods import in_network_of
from tests.utils import github_request

pytestmark = pytest.mark.timeout(1500)  # the first test pays for the session's build

#: the image's user and group (Containerfile USER), which the Kubernetes manifests name too
UID = GID = 10001
DATA = "/var/lib/gitstafette"


def test_image_config(image: BuiltImage) -> None:
    """What Kubernetes and a reviewer read off the image: user, init, ports, volumes, labels, no HEALTHCHECK."""
    inspected = image.config()
    config = inspected["Config"]
    assert config["User"] == f"{UID}:{GID}"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "/opt/venv/bin/gitstafette"]
    assert config["Cmd"] == ["server"]
    assert set(config["ExposedPorts"]) == {"1323/tcp", "50051/tcp", "1324/tcp"}
    assert set(config["Volumes"]) == {DATA, "/tmp"}
    assert config["WorkingDir"] == DATA
    assert "Healthcheck" not in config
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == gitstafette.__version__
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"]
    assert image.size_bytes == inspected["Size"]


def test_version_runs_in_the_image(image: BuiltImage) -> None:
    result = image.run("run", "--rm", "--read-only", "--network=none", *ULIMITS, image.image, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"gitstafette {gitstafette.__version__}"


def _data_dir(tmp_path: Path, name: str) -> Path:
    """A host folder for the image's data volume, owned by its user (as a pod's fsGroup makes it)."""
    data = tmp_path / name
    data.mkdir()
    os.chown(data, UID, GID)
    return data


def _start(image: BuiltImage, names: list[str], data: Path, *command: str) -> str:
    """``podman run`` the image as a restricted pod would run it; returns the container's name."""
    name = f"gst-test-{uuid.uuid4().hex[:8]}"
    names.append(name)
    result = image.run(
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--read-only-tmpfs=false",  # nothing writable but what the test mounts: the image's declared volumes
        "--volume",
        f"{data}:{DATA}",
        "--tmpfs",
        "/tmp:rw,size=16m",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--network=host",
        *ULIMITS,
        image.image,
        *command,
    )
    assert result.returncode == 0, result.stderr
    return name


def _ready(image: BuiltImage, name: str, ready_file: Path) -> dict[str, int]:
    def ready() -> dict[str, int] | None:
        if ready_file.exists():
            return json.loads(ready_file.read_text())  # type: ignore[no-any-return]
        state = json.loads(image.run("inspect", name).stdout)[0]["State"]
        assert state["Running"], f"{name} exited ({state['ExitCode']}):\n{image.run('logs', name).stderr}"
        return None

    return wait_until(ready, timeout=60, message=f"{ready_file.name} of {name}", interval=0.2)  # type: ignore[no-any-return]


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _stop(image: BuiltImage, name: str) -> tuple[int, float, str]:
    """SIGTERM through ``podman stop`` (to PID 1, tini); the exit code, the seconds it took and the log."""
    started = time.monotonic()
    result = image.run("stop", "--time", "30", name, timeout=60)
    assert result.returncode == 0, result.stderr
    took = time.monotonic() - started
    state = json.loads(image.run("inspect", name).stdout)[0]["State"]
    return state["ExitCode"], took, image.run("logs", name).stderr


def test_server_runs_as_its_user_on_a_read_only_root(
    image: BuiltImage, container_names: list[str], tmp_path: Path
) -> None:
    """The server in the image: as UID/GID 10001 under tini, root file system read-only, health answering,
    a webhook stored in the data volume, and a clean stop on SIGTERM."""
    data = _data_dir(tmp_path, "server")
    name = _start(
        image,
        container_names,
        data,
        "server",
        "--host=127.0.0.1",
        "--http-port=0",
        "--grpc-port=0",
        f"--ready-file={DATA}/ready.json",
    )
    ports = _ready(image, name, data / "ready.json")
    url = f"http://127.0.0.1:{ports['http_port']}"

    assert httpx.get(f"{url}/healthz").text == "ok"
    assert httpx.get(f"{url}/readyz").status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{ports['grpc_port']}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING

    # PID 1 of the container is tini, as the image's user; its one child is the server, as that user too.
    init = json.loads(image.run("inspect", name).stdout)[0]["State"]["Pid"]
    assert Path(f"/proc/{init}/comm").read_text().strip() == "tini"
    (server,) = _children(init)
    for pid in (init, server):
        status = _proc_status(pid)
        assert status["Uid"].split() == [str(UID)] * 4
        assert status["Gid"].split() == [str(GID)] * 4
        assert status["CapEff"] == "0000000000000000"
        assert status["NoNewPrivs"] == "1"
    mountinfo = Path(f"/proc/{server}/mountinfo").read_text().splitlines()
    mounts = {line.split()[4]: line.split()[5].split(",") for line in mountinfo}
    assert "ro" in mounts["/"], mounts["/"]

    # The SQLite store (the image's default, in its working directory) writes into the data volume.
    headers, body, repository = github_request(PUSH)
    response = httpx.post(f"{url}/v1/github/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    database = data / "gitstafette.db"
    assert database.stat().st_uid == UID
    assert len(httpx.get(f"{url}/v1/events/{repository}").json()["events"]) == 1

    exit_code, took, log = _stop(image, name)
    assert exit_code == 0, log
    assert took < 15, f"SIGTERM took {took:.1f}s: did tini pass it on?\n{log}"
    assert "gitstafette server stopped" in log
    assert not (data / "ready.json").exists()  # removed by the server's own shutdown


def test_server_and_client_containers_relay_a_webhook(
    image: BuiltImage, container_names: list[str], tmp_path: Path, target: RecordingTarget
) -> None:
    """One image, two commands: a server container and a client container carry a webhook to a target."""
    server_data = _data_dir(tmp_path, "server")
    server = _start(
        image,
        container_names,
        server_data,
        "server",
        "--host=127.0.0.1",
        "--http-port=0",
        "--grpc-port=0",
        f"--ready-file={DATA}/ready.json",
        "--store=memory://",
    )
    ports = _ready(image, server, server_data / "ready.json")
    headers, body, repository = github_request(PUSH)

    client_data = _data_dir(tmp_path, "client")
    client = _start(
        image,
        container_names,
        client_data,
        "client",
        f"--server=127.0.0.1:{ports['grpc_port']}",
        "--insecure",
        f"--repositories={repository}",
        "--client-id=image-test",
        f"--target={target.url}",
        "--health-host=127.0.0.1",
        "--health-port=0",
        f"--ready-file={DATA}/ready.json",
    )
    health = _ready(image, client, client_data / "ready.json")["health_port"]
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{health}/ready").status_code == 200, message="client ready", timeout=30
    )

    response = httpx.post(f"http://127.0.0.1:{ports['http_port']}/v1/github/", headers=headers, content=body)
    assert response.status_code == 201, response.text
    wait_until(lambda: target.requests, message="the webhook at the target")
    (delivered,) = target.requests
    assert delivered.body == body
    assert delivered.delivery_id == headers["X-GitHub-Delivery"]

    for name in (client, server):
        exit_code, _, log = _stop(image, name)
        assert exit_code == 0, log


def test_the_default_command_serves_with_only_the_image_volumes_writable(
    image: BuiltImage, container_names: list[str]
) -> None:
    """`docker run --read-only IMAGE` as it is: `server` on its defaults, the SQLite file in the image's own
    data volume (owned by its user), nothing else writable but /tmp, the other declared volume."""
    name = f"gst-test-{uuid.uuid4().hex[:8]}"
    container_names.append(name)
    result = image.run(
        "run",
        "--detach",
        "--name",
        name,
        "--read-only",
        "--read-only-tmpfs=false",
        "--network=none",
        *ULIMITS,
        image.image,
    )
    assert result.returncode == 0, result.stderr
    pid = json.loads(image.run("inspect", name).stdout)[0]["State"]["Pid"]

    def ready() -> bool:
        try:
            return in_network_of(pid, lambda: httpx.get("http://127.0.0.1:1323/readyz", timeout=2)).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=60, message="the server on its defaults", interval=0.5)
    listing = image.run("exec", name, "/opt/venv/bin/python", "-c", "import os; print(os.listdir('.'))")
    assert "gitstafette.db" in listing.stdout, listing.stdout + listing.stderr
    exit_code, _, log = _stop(image, name)
    assert exit_code == 0, log
