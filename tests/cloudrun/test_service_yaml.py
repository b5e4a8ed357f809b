"""``deploy/cloudrun/service.yaml``: a valid Knative Service (the schema of knative/serving, strict about
unknown fields as a Kubernetes API server is), within Cloud Run's constraints, and consistent with the
ingress configuration and the server's options it names."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gitstafette.config import parse_duration
from tests.cloudrun.ingress import CONFIG, CONTAINERFILE
from tests.schemas import SCHEMAS, strict
from tests.utils import ROOT

SERVICE = ROOT / "deploy" / "cloudrun" / "service.yaml"
SCHEMA = SCHEMAS / "knative-service-crd.yaml"
#: the image of each container, by the Containerfile it is built from
CONTAINERFILES = {"ingress": CONTAINERFILE, "app": ROOT / "Containerfile"}


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SERVICE.read_text())
    return loaded


def containers(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in service["spec"]["template"]["spec"]["containers"]}


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def test_it_validates_against_the_knative_service_schema(service: dict[str, Any]) -> None:
    crd = yaml.safe_load(SCHEMA.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert (service["apiVersion"], service["kind"]) == ("serving.knative.dev/v1", "Service")
    jsonschema.validate(service, strict(version["schema"]["openAPIV3Schema"]))
    with pytest.raises(jsonschema.ValidationError):  # the strictness bites
        broken = json.loads(json.dumps(service))
        broken["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = {}
        jsonschema.validate(broken, strict(version["schema"]["openAPIV3Schema"]))


def test_cloud_run_constraints(service: dict[str, Any]) -> None:
    template = service["spec"]["template"]
    spec, annotations = template["spec"], template["metadata"]["annotations"]
    by_name = containers(service)
    # One container, the ingress, has the port; it is named h2c (HTTP/2 end to end) and HAProxy binds it.
    with_ports = [name for name, c in by_name.items() if c.get("ports")]
    assert with_ports == ["ingress"]
    (port,) = by_name["ingress"]["ports"]
    assert port["name"] == "h2c"
    assert f"${{PORT-{port['containerPort']}}}" in CONFIG.read_text()
    # The server starts first, then the ingress in front of it.
    assert json.loads(annotations["run.googleapis.com/container-dependencies"]) == {"ingress": ["app"]}
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    assert 0 < spec["timeoutSeconds"] <= 3600
    assert spec["containerConcurrency"] >= 100  # each open stream holds one request for its lifetime
    # gRPC startup and liveness probes on every container: the ingress's through the one port.
    app_args = by_name["app"]["args"]
    grpc_port = int(app_args[app_args.index("--grpc-port") + 1])
    for name, probe_port in (("ingress", port["containerPort"]), ("app", grpc_port)):
        for probe in ("startupProbe", "livenessProbe"):
            assert by_name[name][probe]["grpc"]["port"] == probe_port, (name, probe)


def test_streams_outlive_the_heartbeat_and_the_proxy_timeout(service: dict[str, Any]) -> None:
    """heartbeat < the proxy's idle timeout < Cloud Run's request timeout."""
    by_name = containers(service)
    heartbeat_s = parse_duration(env(by_name["app"])["GITSTAFETTE_HEARTBEAT"]["value"], "heartbeat")
    proxy_s = parse_duration(env(by_name["ingress"])["GITSTAFETTE_PROXY_TIMEOUT"]["value"], "proxy timeout")
    assert 2 * heartbeat_s < proxy_s < service["spec"]["template"]["spec"]["timeoutSeconds"]
    # and the ingress configuration reads that variable for both of its sides
    assert CONFIG.read_text().count('"${GITSTAFETTE_PROXY_TIMEOUT-') == 2


def test_secrets_come_from_secret_manager_and_every_setting_is_a_server_option(service: dict[str, Any]) -> None:
    app = containers(service)["app"]
    variables = env(app)
    for name in ("GITSTAFETTE_WEBHOOK_SECRET", "GITSTAFETTE_ADMIN_TOKEN"):
        assert "value" not in variables[name] and variables[name]["valueFrom"]["secretKeyRef"]["key"]
    volumes = {v["name"]: v for v in service["spec"]["template"]["spec"]["volumes"]}
    (mount,) = app["volumeMounts"]
    assert volumes[mount["name"]]["secret"]["secretName"]
    assert variables["GITSTAFETTE_TOKENS_FILE"]["value"].startswith(mount["mountPath"] + "/")
    assert variables["GITSTAFETTE_STORE"]["value"].startswith("redis://")  # Memorystore: no disk on Cloud Run
    help_text = subprocess.run(
        [sys.executable, "-m", "gitstafette", *app["args"][:1], "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "200", "TERM": "dumb", "PATH": ""},
    ).stdout
    for name in variables:
        if name != "GITSTAFETTE_ADMIN_TOKEN":  # read from the environment only (see --admin-token-file)
            assert name in help_text, f"{name} is no option of gitstafette {app['args'][0]}"
    for option in (arg for arg in app["args"] if arg.startswith("--")):
        assert option in help_text


@pytest.mark.parametrize("name", sorted(CONTAINERFILES))
def test_every_container_runs_as_a_non_root_user(service: dict[str, Any], name: str) -> None:
    """Cloud Run ignores securityContext: the user is the image's, its Containerfile's last USER."""
    assert all("securityContext" not in c for c in containers(service).values())
    containerfile: Path = CONTAINERFILES[name]
    if not containerfile.exists():
        pytest.skip(f"{containerfile.name} is not in this checkout yet (the container image comes with its own change)")
    users = re.findall(r"^USER\s+(\S+)", containerfile.read_text(), re.MULTILINE)
    assert users, f"{containerfile} sets no USER: its container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
