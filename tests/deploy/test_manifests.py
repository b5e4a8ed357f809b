"""deploy/kubernetes/: every overlay rendered by `kubectl kustomize`, validated by `kubernetes-validate --strict`
against the API schemas of Kubernetes 1.32 (the oldest still supported) and 1.37 (the newest it knows),
checked against the restricted Pod Security Standard and the project's hardening, and read for what the
overlays promise: network policies, probes, grace periods, stores, secrets kept out, the ingress' limits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitstafette.k8s.pod_security import hardening_violations, pod_templates
from tests.deploy.tools import KUSTOMIZE_ROOT, tool

#: a server overlay with the TLS component added, as docs/kubernetes.md shows it
SERVER_TLS = "overlays/server-sqlite+components/server-tls"
OVERLAYS = ("overlays/server-sqlite", "overlays/server-redis", "overlays/client", SERVER_TLS)
RENDERED = (*OVERLAYS, "ingress")
SERVER_OVERLAYS = ("overlays/server-sqlite", "overlays/server-redis", SERVER_TLS)
#: the Kubernetes versions validated against: the oldest supported release and the newest kubernetes-validate has
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")
UID = 10001
NAMESPACE = "gitstafette"
SERVER = {"app.kubernetes.io/name": "gitstafette", "app.kubernetes.io/component": "server"}
CLIENT = {"app.kubernetes.io/name": "gitstafette", "app.kubernetes.io/component": "client"}


@cache
def render(directory: str) -> tuple[str, tuple[dict[str, Any], ...]]:
    """`kubectl kustomize deploy/kubernetes/<directory>`: the YAML and its documents. ``overlay+component``
    renders the overlay with the component added, through a kustomization of the test's own."""
    kubectl = tool("kubectl", "apt-get install kubectl; kubectl kustomize renders the overlays")
    with tempfile.TemporaryDirectory() as scratch:
        root = KUSTOMIZE_ROOT / directory
        if "+" in directory:
            overlay, *components = (os.path.relpath(KUSTOMIZE_ROOT / part, scratch) for part in directory.split("+"))
            kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
            kustomization.update(resources=[overlay], components=components)  # type: ignore[arg-type]
            (Path(scratch) / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            root = Path(scratch)
        result = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout, tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def documents(directory: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [document for document in render(directory)[1] if kind is None or document["kind"] == kind]


def one(directory: str, kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in documents(directory, kind) if name is None or d["metadata"]["name"] == name]
    return found


def pod_spec(directory: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(directory, "Deployment")["spec"]["template"]["spec"]
    return spec


def environment(directory: str) -> dict[str, Any]:
    """The container's environment: its ConfigMap's data (envFrom), then env (values, or the valueFrom)."""
    (container,) = pod_spec(directory)["containers"]
    found: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        found.update(one(directory, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        found[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return found


@pytest.mark.parametrize("directory", RENDERED)
def test_renders_and_validates_strictly(directory: str, tmp_path: Path) -> None:
    text, rendered = render(directory)
    validate = tool("kubernetes-validate", "pip install kubernetes-validate, part of the test extra")
    path = tmp_path / "rendered.yaml"
    path.write_text(text)
    versions = [argument for version in KUBERNETES_VERSIONS for argument in ("-k", version)]
    result = subprocess.run([validate, "--strict", *versions, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # A kind it has no schema for is only a WARN with exit code 0: every document must have passed.
    lines = result.stdout.splitlines()
    assert [line for line in lines if not line.startswith("INFO")] == []
    assert len([line for line in lines if " passed for resource " in line]) == len(rendered) * len(KUBERNETES_VERSIONS)


@pytest.mark.parametrize("directory", OVERLAYS)
def test_every_pod_meets_restricted_and_the_hardening(directory: str) -> None:
    rendered = documents(directory)
    assert sum(1 for document in rendered for _ in pod_templates(document)) == 1
    assert [str(v) for document in rendered for v in hardening_violations(document)] == []


@pytest.mark.parametrize("directory", OVERLAYS)
def test_pods_run_as_the_image_user_with_their_own_service_account(directory: str) -> None:
    spec = pod_spec(directory)
    context = spec["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (UID, UID, True)
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    account = one(directory, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["image"] == "localhost/gitstafette:dev"  # set in one place: the kustomization's images
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("directory", RENDERED)
def test_everything_is_in_a_namespace_under_the_restricted_standard(directory: str) -> None:
    for document in documents(directory):
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == NAMESPACE, document["metadata"]
    if directory == "ingress":
        return  # goes beside a server overlay, which brings the namespace
    labels = one(directory, "Namespace", NAMESPACE)["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions would need more than this
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def allowed(directory: str, labels: dict[str, str], direction: str) -> set[tuple[str, int, str]]:
    """(peer, port, protocol) that the NetworkPolicies of ``directory`` let in or out of pods with ``labels``;
    the peer is written as the policy's selector or block, for the assertions to read."""
    key = "ingress" if direction == "Ingress" else "egress"
    found = set()
    for policy in documents(directory, "NetworkPolicy"):
        spec = policy["spec"]
        if direction not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
            continue
        for rule in spec.get(key, []):
            peers = rule.get("from" if key == "ingress" else "to")
            assert peers, f"{policy['metadata']['name']}: a rule without peers allows everyone"
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule without ports allows every port"
            for peer in peers:
                for port in rule["ports"]:
                    found.add((yaml.safe_dump(peer, default_flow_style=True).strip(), port["port"], port["protocol"]))
    return found


def _ports(rules: set[tuple[str, int, str]]) -> set[int]:
    return {port for _, port, _ in rules}


@pytest.mark.parametrize("directory", OVERLAYS)
def test_default_deny_both_ways_and_dns_only_to_the_cluster_dns(directory: str) -> None:
    (deny,) = [p for p in documents(directory, "NetworkPolicy") if p["metadata"]["name"] == "default-deny"]
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    everyone = allowed(directory, {"any": "pod"}, "Egress")
    assert {(port, protocol) for _, port, protocol in everyone} == {(53, "UDP"), (53, "TCP")}
    assert all("kube-dns" in peer for peer, _, _ in everyone)
    assert allowed(directory, {"any": "pod"}, "Ingress") == set()


@pytest.mark.parametrize("directory", SERVER_OVERLAYS)
def test_the_server_admits_its_two_ports_and_metrics_from_monitoring_only(directory: str) -> None:
    ingress = allowed(directory, SERVER, "Ingress")
    controller = "{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}"
    monitoring = "{namespaceSelector: {matchLabels: {gitstafette/monitoring: 'true'}}}"
    assert ingress == {(controller, 1323, "TCP"), (controller, 50051, "TCP"), (monitoring, 1323, "TCP")}
    (container,) = pod_spec(directory)["containers"]
    assert {port["containerPort"] for port in container["ports"]} == {1323, 50051}


def test_the_server_reaches_out_only_to_dns_and_redis() -> None:
    assert _ports(allowed("overlays/server-sqlite", SERVER, "Egress")) == {53}
    egress = allowed("overlays/server-redis", SERVER, "Egress")
    assert _ports(egress) == {53, 6379, 26379}
    assert {peer for peer, port, _ in egress if port != 53} == {
        "{podSelector: {matchLabels: {app.kubernetes.io/name: redis}}}"
    }


def test_the_client_reaches_out_only_to_dns_the_server_and_its_target() -> None:
    egress = allowed("overlays/client", CLIENT, "Egress")
    assert _ports(egress) == {53, 443, 8080}
    (server_peer,) = {peer for peer, port, _ in egress if port == 443}
    assert "0.0.0.0/0" in server_peer and "10.0.0.0/8" in server_peer  # public addresses only
    (target_peer,) = {peer for peer, port, _ in egress if port == 8080}
    assert "jenkins" in target_peer
    target = environment("overlays/client")["GITSTAFETTE_TARGET"]
    assert re.match(r"http://[^/]+\.jenkins\.svc[^/]*:8080/", target), "the policy's target is the ConfigMap's"
    assert _ports(allowed("overlays/client", CLIENT, "Ingress")) == {1324}


def _seconds(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(s|m)", duration).groups()  # type: ignore[union-attr]
    return int(number) * (60 if unit == "m" else 1)


@pytest.mark.parametrize("directory", SERVER_OVERLAYS)
def test_server_probes_and_a_grace_period_for_what_is_in_flight(directory: str) -> None:
    spec = pod_spec(directory)
    (container,) = spec["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    scheme = {"scheme": "HTTPS"} if directory == SERVER_TLS else {}
    if directory == SERVER_TLS:  # the kubelet's gRPC probe speaks no TLS: the same store check over HTTPS
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", **scheme}
        assert "grpc" not in container["readinessProbe"]
    else:  # readiness: the kubelet's gRPC probe against grpc.health.v1 on the gRPC port
        assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"]}
    # liveness and startup: HTTP /healthz, which does not depend on the store
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http", **scheme}
    grace = _seconds(environment(directory)["GITSTAFETTE_SHUTDOWN_GRACE"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # the server's grace, then 2 s for the last writes and the store's close (docs/configuration.md)
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + grace + 2 + 5


def test_client_probes_and_a_grace_period_for_the_delivery_under_way() -> None:
    spec = pod_spec("overlays/client")
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "health"}
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {"health": 1324}
    grace = _seconds(environment("overlays/client")["GITSTAFETTE_SHUTDOWN_GRACE"])
    assert grace >= 30, "a delivery attempt may take --delivery-timeout (30 s)"
    # then the last acknowledgements and the stream's close (client/app.py STREAM_CLOSE_S, 5 s)
    assert spec["terminationGracePeriodSeconds"] >= grace + 5 + 5


def test_the_tls_component_serves_both_ports_with_certificates_from_a_secret() -> None:
    env = environment(SERVER_TLS)
    spec = pod_spec(SERVER_TLS)
    (tls,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "gitstafette-server-tls"
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "tls"]
    for option, key in (("CERT", "tls.crt"), ("KEY", "tls.key"), ("CLIENT_CA", "ca.crt")):
        assert env[f"GITSTAFETTE_TLS_{option}"] == f"{mount['mountPath']}/{key}"
    service = one(SERVER_TLS, "Service")
    assert {port["appProtocol"] for port in service["spec"]["ports"]} == {"https"}
    # the rest of the overlay is as it was
    plain = one("overlays/server-sqlite", "Deployment")["spec"]["template"]["spec"]
    assert {k: v for k, v in spec.items() if k not in ("containers", "volumes")} == {
        k: v for k, v in plain.items() if k not in ("containers", "volumes")
    }


def test_sqlite_overlay_one_replica_on_a_volume_replaced_not_rolled() -> None:
    deployment = one("overlays/server-sqlite", "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    spec = deployment["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    claim = one("overlays/server-sqlite", "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    store = environment("overlays/server-sqlite")["GITSTAFETTE_STORE"]
    assert store.startswith(f"sqlite:///{mount['mountPath']}/"), (store, mount)
    assert documents("overlays/server-sqlite", "HorizontalPodAutoscaler") == []


def test_redis_overlay_scales_spreads_and_keeps_replicas_available() -> None:
    directory = "overlays/server-redis"
    deployment = one(directory, "Deployment")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    hpa = one(directory, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = one(directory, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(pdb["spec"]["selector"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert all(_selects(c["labelSelector"], labels) for c in spread)
    store = environment(directory)["GITSTAFETTE_STORE"]
    assert store == {"secretKeyRef": {"name": "gitstafette-redis", "key": "url"}}  # it carries the password


@pytest.mark.parametrize("directory", OVERLAYS)
def test_secrets_come_from_secrets_and_none_is_in_the_manifests(directory: str) -> None:
    assert documents(directory, "Secret") == []
    for name, value in environment(directory).items():
        if re.search(r"TOKEN|SECRET|_KEY|STORE", name):  # the store's URL may carry Redis' password
            from_secret = isinstance(value, dict) and "secretKeyRef" in value
            file = isinstance(value, str) and value.startswith("/etc/gitstafette/")
            sqlite = name == "GITSTAFETTE_STORE" and str(value).startswith("sqlite:")
            assert from_secret or file or sqlite, f"{name} should come from a Secret (a key, or a mounted file)"
        if isinstance(value, str) and value.startswith("/etc/gitstafette/"):
            mounts = {m["mountPath"]: m for m in pod_spec(directory)["containers"][0]["volumeMounts"]}
            (mount,) = [m for path, m in mounts.items() if value.startswith(path + "/")]
            (volume,) = [v for v in pod_spec(directory)["volumes"] if v["name"] == mount["name"]]
            assert "secret" in volume and mount["readOnly"] is True, f"{name}: {value} should be a mounted Secret"


def test_the_client_gets_its_mutual_tls_material_from_a_secret() -> None:
    env = environment("overlays/client")
    spec = pod_spec("overlays/client")
    (tls,) = [v for v in spec["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "gitstafette-client-tls"
    for option in ("GITSTAFETTE_TLS_CERT", "GITSTAFETTE_TLS_KEY", "GITSTAFETTE_TLS_CA"):
        assert env[option].startswith("/etc/gitstafette/tls/")
    assert "GITSTAFETTE_INSECURE" not in env


@cache
def _options(command: str) -> set[str]:
    """The environment variables ``gitstafette <command> --help`` documents."""
    result = subprocess.run(
        [sys.executable, "-m", "gitstafette", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"GITSTAFETTE_[A-Z_]+", result.stdout))


@pytest.mark.parametrize(("directory", "command"), [(o, "client" if "client" in o else "server") for o in OVERLAYS])
def test_every_variable_set_is_an_option_of_the_command(directory: str, command: str) -> None:
    """A misspelt GITSTAFETTE_* is ignored by the process, silently; here it fails."""
    (container,) = pod_spec(directory)["containers"]
    assert container["args"] == [command]
    unknown = {name for name in environment(directory) if name not in _options(command)}
    assert unknown == set()


def _ingresses() -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(ingress, its one path, the server's Service port it reaches)."""
    service = one("overlays/server-sqlite", "Service", "gitstafette-server")
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    for ingress in documents("ingress", "Ingress"):
        (rule,) = ingress["spec"]["rules"]
        (path,) = rule["http"]["paths"]
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
        yield ingress, path, ports[backend["port"]["name"]]


def test_the_ingress_takes_webhooks_of_github_size_and_long_grpc_streams() -> None:
    by_port = {port["port"]: (ingress, path) for ingress, path, port in _ingresses()}
    assert set(by_port) == {1323, 50051}
    webhook, path = by_port[1323]
    annotations = webhook["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "25m"  # GitHub's cap on a payload
    assert (path["path"], path["pathType"]) == ("/v1/github", "Prefix")  # not the REST read API or /metrics
    grpc, _ = by_port[50051]
    annotations = grpc["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"  # a stream is one request body
