"""The overlays' own pod specs run in the built image: the environment their ConfigMaps and Secrets give,
the Secrets as mounted files, the volumes, the security context and the arguments, exactly as rendered; then
the probes they declare are asked, in the container's network namespace, as the kubelet would.

Only what a user must set anyway is given here instead: the Secrets' contents, and, for the client, where
its server and target are (its ConfigMap names example hosts)."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.utils import PUSH, RecordingTarget, wait_until
from tests.deploy.conftest import BuiltImage
from tests.deploy.pods import Pod, grpc_health, in_network_of
from tests.deploy.test_manifests import SERVER_TLS, documents
from tests.security.utils import sign
from tests.utils import github_request

pytestmark = pytest.mark.timeout(1500)  # the session's build may fall to the first of these

TOKEN = "client-token-of-the-test"
ADMIN_TOKEN = "admin-token-of-the-test"
WEBHOOK_SECRET = "webhook-secret-of-the-test"


def _tokens_file(repository: str) -> bytes:
    entry = {"sha256": hashlib.sha256(TOKEN.encode()).hexdigest(), "client_id": "jenkins", "repositories": [repository]}
    return json.dumps({"tokens": [entry]}).encode()  # JSON is YAML


def _start(image: BuiltImage, names: list[str], arguments: list[str]) -> int:
    """Run it; the host pid of the container's PID 1 (tini), whose network namespace is the pod's."""
    name = arguments[arguments.index("--name") + 1]
    names.append(name)  # removed afterwards even when it did not start
    result = image.run(*arguments)
    assert result.returncode == 0, result.stderr
    pid: int = json.loads(image.run("inspect", name).stdout)[0]["State"]["Pid"]
    assert pid, image.run("logs", name).stderr
    return pid


def _get(pid: int, url: str, **options: Any) -> httpx.Response:
    def get() -> httpx.Response:
        try:
            with httpx.Client(**options) as client:
                return client.get(url, timeout=5)
        except httpx.HTTPError as exc:
            return httpx.Response(599, text=str(exc))

    return in_network_of(pid, get)


def _trust(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)


def _probe(pod: Pod, pid: int, probe: str) -> bool:
    """The container's ``probe`` (httpGet or grpc) as the kubelet asks it: True when it succeeds."""
    handler = pod.container[probe]
    if "grpc" in handler:
        return grpc_health(pid, pod.port(handler["grpc"]["port"])) == "SERVING"
    http = handler["httpGet"]
    scheme = http.get("scheme", "HTTP").lower()  # the kubelet does not verify an HTTPS probe's certificate
    response = _get(pid, f"{scheme}://127.0.0.1:{pod.port(http['port'])}{http['path']}", verify=False)
    return 200 <= response.status_code < 400


def _stop(image: BuiltImage, name: str, grace: int) -> tuple[int, float, str]:
    started = time.monotonic()
    assert image.run("stop", "--time", str(grace), name, timeout=grace + 30).returncode == 0
    took = time.monotonic() - started
    state = json.loads(image.run("inspect", name).stdout)[0]["State"]
    return state["ExitCode"], took, image.run("logs", name).stderr


def test_server_sqlite_overlay_runs_and_answers_its_probes(
    image: BuiltImage, container_names: list[str], tmp_path: Path
) -> None:
    headers, body, repository = github_request(PUSH)
    secrets = {
        "gitstafette-server": {
            "webhook-secret": WEBHOOK_SECRET.encode(),
            "tokens.yaml": _tokens_file(repository),
            "admin-token": ADMIN_TOKEN.encode(),
        }
    }
    pod = Pod(documents("overlays/server-sqlite"), secrets, tmp_path)
    # the ConfigMap's repository is an example: this webhook's, so that it is accepted
    pid = _start(image, container_names, pod.podman_run(image, "none", {"GITSTAFETTE_REPOSITORIES": repository}))
    name = container_names[-1]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        wait_until(lambda probe=probe: _probe(pod, pid, probe), timeout=60, message=probe, interval=0.5)

    http = f"http://127.0.0.1:{pod.port('http')}"
    unsigned = in_network_of(pid, lambda: httpx.post(f"{http}/v1/github/", headers=headers, content=body))
    assert unsigned.status_code == 401, "the webhook secret from the Secret is in force"
    signed = {**headers, "X-Hub-Signature-256": sign(WEBHOOK_SECRET, body)}
    assert in_network_of(pid, lambda: httpx.post(f"{http}/v1/github/", headers=signed, content=body)).status_code == 201
    events = f"{http}/v1/events/{repository}"
    assert _get(pid, events).status_code == 401, "the tokens file makes the read API need the admin token"
    answer = _get(pid, events, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code == 200 and len(answer.json()["events"]) == 1
    assert (tmp_path / "data" / "gitstafette.db").exists(), "the store is on the claim's volume"

    exit_code, took, log = _stop(image, name, pod.spec["terminationGracePeriodSeconds"])
    assert exit_code == 0, log
    assert took < pod.spec["terminationGracePeriodSeconds"]


def _certificates(folder: Path) -> Path:
    """A development CA, a server certificate for 127.0.0.1 and the client certificate of jenkins."""
    result = subprocess.run(
        [sys.executable, "-m", "gitstafette", "certs", "--out", str(folder), "--server-name", "127.0.0.1"]
        + ["--client-name", "jenkins"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return folder


def test_client_overlay_relays_over_mutual_tls_with_its_secrets(
    image: BuiltImage, container_names: list[str], tmp_path: Path
) -> None:
    """The client pod as rendered, with its token, webhook secret and client certificate from its Secrets,
    beside the server pod of server-sqlite with the TLS component, as rendered too, which asks for all three
    (mutual TLS, its tokens file, the webhook secret): the client's pod shares the server's network, as if
    the ingress that would stand between them were not there."""
    headers, body, repository = github_request(PUSH)
    certs = _certificates(tmp_path / "certs")
    server = Pod(
        documents(SERVER_TLS),
        {
            "gitstafette-server": {
                "webhook-secret": WEBHOOK_SECRET.encode(),
                "tokens.yaml": _tokens_file(repository),
                "admin-token": ADMIN_TOKEN.encode(),
            },
            "gitstafette-server-tls": {
                "tls.crt": (certs / "server.pem").read_bytes(),
                "tls.key": (certs / "server-key.pem").read_bytes(),
                "ca.crt": (certs / "ca.pem").read_bytes(),  # the CA of the clients' certificates, too
            },
        },
        tmp_path / "server",
    )
    (tmp_path / "server").mkdir()
    server_pid = _start(
        image, container_names, server.podman_run(image, "none", {"GITSTAFETTE_REPOSITORIES": repository})
    )
    server_name = container_names[-1]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        wait_until(lambda probe=probe: _probe(server, server_pid, probe), timeout=60, message=probe, interval=0.5)
    target = in_network_of(server_pid, lambda: RecordingTarget().start())
    try:
        secrets = {
            "gitstafette-client": {"token": TOKEN.encode(), "webhook-secret": WEBHOOK_SECRET.encode()},
            "gitstafette-client-tls": {
                "tls.crt": (certs / "client-jenkins.pem").read_bytes(),
                "tls.key": (certs / "client-jenkins-key.pem").read_bytes(),
                "ca.crt": (certs / "ca.pem").read_bytes(),
            },
        }
        (tmp_path / "client").mkdir()
        pod = Pod(documents("overlays/client"), secrets, tmp_path / "client")
        # where the server and the target are, and which repository: what a user sets in the ConfigMap
        overrides = {
            "GITSTAFETTE_SERVER": f"127.0.0.1:{server.port('grpc')}",
            "GITSTAFETTE_TARGET": target.url,
            "GITSTAFETTE_REPOSITORIES": repository,
        }
        client_pid = _start(image, container_names, pod.podman_run(image, f"container:{server_name}", overrides))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            wait_until(lambda probe=probe: _probe(pod, client_pid, probe), timeout=60, message=probe, interval=0.5)

        signed = {**headers, "X-Hub-Signature-256": sign(WEBHOOK_SECRET, body)}
        url = f"https://127.0.0.1:{server.port('http')}/v1/github/"
        trust = _trust(certs / "ca.pem")
        posted = in_network_of(server_pid, lambda: httpx.post(url, headers=signed, content=body, verify=trust))
        assert posted.status_code == 201, posted.text
        wait_until(lambda: target.requests, message="the webhook at the target", timeout=30)
        (delivered,) = target.requests
        assert delivered.body == body
        assert delivered.header("X-Hub-Signature-256") == signed["X-Hub-Signature-256"]

        for name, spec in ((container_names[-1], pod.spec), (server_name, server.spec)):
            exit_code, took, log = _stop(image, name, spec["terminationGracePeriodSeconds"])
            assert exit_code == 0, log
            assert took < spec["terminationGracePeriodSeconds"]
    finally:
        target.stop()
