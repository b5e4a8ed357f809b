"""The pod-security checker (gitstafette.k8s.pod_security) on specs made bad on purpose: each one is refused,
with the field named; and what the standard allows passes."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitstafette.k8s.pod_security import hardening_violations, main, pod_templates, restricted_violations

P = "spec.template.spec"  # a Deployment's pod spec
C = f"{P}.containers[0]"
SC = f"{C}.securityContext"


def deployment() -> dict[str, Any]:
    """A Deployment that meets the restricted profile and the project's hardening, as the overlays write one."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "relay"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "relay"}},
                "spec": {
                    "serviceAccountName": "relay",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "relay",
                            "image": "gitstafette",
                            "ports": [{"containerPort": 1323}],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "1", "memory": "512Mi"},
                            },
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 1323}},
                        }
                    ],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            }
        },
    }


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _pod(manifest)["containers"][0]
    return container


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path below the Deployment's pod spec ("containers.0.x" indexes a list)."""

    def change(manifest: dict[str, Any]) -> None:
        node: Any = _pod(manifest)
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[last] = value

    return change


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        node: Any = _pod(manifest)
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return change


def _volume(volume: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: _pod(manifest)["volumes"].append({"name": "extra", **volume})


def _annotate(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest["spec"]["template"]["metadata"].setdefault("annotations", {}).update({key: value})


def _init_container(**security: Any) -> Callable[[dict[str, Any]], None]:
    def change(manifest: dict[str, Any]) -> None:
        init = copy.deepcopy(_container(manifest))
        init["name"] = "init"
        init["securityContext"].update(security)
        _pod(manifest)["initContainers"] = [init]

    return change


#: (what is wrong, the change, the field that must be named, the control)
BAD: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("privileged", _set("containers.0.securityContext.privileged", True), f"{SC}.privileged", "privileged"),
    ("hostPath volume", _volume({"hostPath": {"path": "/"}}), f"{P}.volumes[1].hostPath", "hostPathVolumes"),
    ("root user (pod)", _set("securityContext.runAsUser", 0), f"{P}.securityContext.runAsUser", "runAsUser"),
    ("root user (container)", _set("containers.0.securityContext.runAsUser", 0), f"{SC}.runAsUser", "runAsUser"),
    (
        "runAsNonRoot false",
        _set("securityContext.runAsNonRoot", False),
        f"{P}.securityContext.runAsNonRoot",
        "runAsNonRoot",
    ),
    ("runAsNonRoot unset", _delete("securityContext.runAsNonRoot"), f"{SC}.runAsNonRoot", "runAsNonRoot"),
    (
        "seccomp missing",
        _delete("securityContext.seccompProfile"),
        f"{SC}.seccompProfile.type",
        "seccompProfile_restricted",
    ),
    (
        "seccomp Unconfined",
        _set("containers.0.securityContext.seccompProfile", {"type": "Unconfined"}),
        f"{SC}.seccompProfile.type",
        "seccompProfile_baseline",
    ),
    (
        "seccomp annotation unconfined",
        _annotate("seccomp.security.alpha.kubernetes.io/pod", "unconfined"),
        "spec.template.metadata.annotations[seccomp.security.alpha.kubernetes.io/pod]",
        "seccompProfile_baseline",
    ),
    (
        "capability SYS_ADMIN added",
        _set("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"]),
        f"{SC}.capabilities.add[0]",
        "capabilities_baseline",
    ),
    (
        "capability NET_RAW added",
        _set("containers.0.securityContext.capabilities.add", ["NET_RAW"]),
        f"{SC}.capabilities.add[0]",
        "capabilities_baseline",
    ),
    (
        "capability CHOWN added (baseline's default set, not restricted's)",
        _set("containers.0.securityContext.capabilities.add", ["CHOWN"]),
        f"{SC}.capabilities.add[0]",
        "capabilities_restricted",
    ),
    (
        "capabilities not dropped",
        _set("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}),
        f"{SC}.capabilities.drop",
        "capabilities_restricted",
    ),
    ("hostPort", _set("containers.0.ports.0.hostPort", 1323), f"{C}.ports[0].hostPort", "hostPorts"),
    ("hostNetwork", _set("hostNetwork", True), f"{P}.hostNetwork", "hostNamespaces"),
    ("hostPID", _set("hostPID", True), f"{P}.hostPID", "hostNamespaces"),
    ("hostIPC", _set("hostIPC", True), f"{P}.hostIPC", "hostNamespaces"),
    ("procMount Unmasked", _set("containers.0.securityContext.procMount", "Unmasked"), f"{SC}.procMount", "procMount"),
    (
        "unsafe sysctl",
        _set("securityContext.sysctls", [{"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "kernel.msgmax"}]),
        f"{P}.securityContext.sysctls[1].name",
        "sysctls",
    ),
    (
        "AppArmor Unconfined",
        _set("securityContext.appArmorProfile", {"type": "Unconfined"}),
        f"{P}.securityContext.appArmorProfile.type",
        "appArmorProfile",
    ),
    (
        "AppArmor annotation unconfined",
        _annotate("container.apparmor.security.beta.kubernetes.io/relay", "unconfined"),
        "spec.template.metadata.annotations[container.apparmor.security.beta.kubernetes.io/relay]",
        "appArmorProfile",
    ),
    (
        "SELinux type spc_t",
        _set("containers.0.securityContext.seLinuxOptions", {"type": "spc_t"}),
        f"{SC}.seLinuxOptions.type",
        "seLinuxOptions",
    ),
    (
        "SELinux user",
        _set("securityContext.seLinuxOptions", {"user": "system_u"}),
        f"{P}.securityContext.seLinuxOptions.user",
        "seLinuxOptions",
    ),
    (
        "Windows HostProcess",
        _set("securityContext.windowsOptions", {"hostProcess": True}),
        f"{P}.securityContext.windowsOptions.hostProcess",
        "windowsHostProcess",
    ),
    (
        "allowPrivilegeEscalation unset",
        _delete("containers.0.securityContext.allowPrivilegeEscalation"),
        f"{SC}.allowPrivilegeEscalation",
        "allowPrivilegeEscalation",
    ),
    (
        "allowPrivilegeEscalation true",
        _set("containers.0.securityContext.allowPrivilegeEscalation", True),
        f"{SC}.allowPrivilegeEscalation",
        "allowPrivilegeEscalation",
    ),
    ("nfs volume", _volume({"nfs": {"server": "nas", "path": "/"}}), f"{P}.volumes[1].nfs", "restrictedVolumes"),
    ("gitRepo volume", _volume({"gitRepo": {"repository": "x"}}), f"{P}.volumes[1].gitRepo", "restrictedVolumes"),
    (
        "probe host",
        _set("containers.0.livenessProbe.httpGet.host", "169.254.169.254"),
        f"{C}.livenessProbe.httpGet.host",
        "hostProbesAndHostLifecycle",
    ),
    (
        "preStop host",
        _set("containers.0.lifecycle", {"preStop": {"tcpSocket": {"host": "10.0.0.1", "port": 22}}}),
        f"{C}.lifecycle.preStop.tcpSocket.host",
        "hostProbesAndHostLifecycle",
    ),
    (
        "privileged init container",
        _init_container(privileged=True),
        f"{P}.initContainers[0].securityContext.privileged",
        "privileged",
    ),
]


def test_the_good_deployment_passes() -> None:
    assert hardening_violations(deployment()) == []


@pytest.mark.parametrize(("change", "field", "control"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_bad_spec_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], None], field: str, control: str
) -> None:
    manifest = deployment()
    change(manifest)
    found = restricted_violations(manifest)
    assert [v for v in found if v.path == field and v.control == control], "\n".join(map(str, found))
    for violation in found:
        assert violation.resource == "Deployment/relay"
        assert violation.path in str(violation)


def test_added_capability_names_it() -> None:
    manifest = deployment()
    _set("containers.0.securityContext.capabilities.add", ["SYS_ADMIN"])(manifest)
    assert {str(v).split(": ", 2)[2] for v in restricted_violations(manifest)} == {
        "adds SYS_ADMIN [capabilities_baseline]",
        "adds SYS_ADMIN [capabilities_restricted]",
    }


@pytest.mark.parametrize(
    "change",
    [
        _set("containers.0.securityContext.capabilities.add", ["NET_BIND_SERVICE"]),
        _set("securityContext.sysctls", [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]),
        _set("containers.0.securityContext.seccompProfile", {"type": "Localhost", "localhostProfile": "p.json"}),
        _set("securityContext.appArmorProfile", {"type": "RuntimeDefault"}),
        _set("securityContext.seLinuxOptions", {"type": "container_t", "level": "s0:c1,c2"}),
        _volume({"projected": {"sources": []}}),
        _volume({"persistentVolumeClaim": {"claimName": "data"}}),
        _set("containers.0.securityContext.procMount", "Default"),
        _set("containers.0.ports.0.hostPort", 0),
        _annotate("container.apparmor.security.beta.kubernetes.io/relay", "localhost/relay"),
    ],
    ids=[
        "NET_BIND_SERVICE",
        "safe sysctl",
        "Localhost seccomp",
        "AppArmor RuntimeDefault",
        "SELinux level",
        "projected",
        "PVC",
        "procMount Default",
        "hostPort 0",
        "AppArmor localhost",
    ],
)
def test_what_restricted_allows_passes(change: Callable[[dict[str, Any]], None]) -> None:
    manifest = deployment()
    change(manifest)
    assert restricted_violations(manifest) == []


def test_container_level_settings_can_stand_in_for_the_pod_level() -> None:
    manifest = deployment()
    pod = _pod(manifest)
    pod["securityContext"] = {}
    pod["containers"][0]["securityContext"].update(runAsNonRoot=True, seccompProfile={"type": "RuntimeDefault"})
    assert restricted_violations(manifest) == []


def test_windows_pods_are_exempt_from_the_linux_controls_only() -> None:
    manifest = deployment()
    pod = _pod(manifest)
    pod["os"] = {"name": "windows"}
    del pod["securityContext"]["seccompProfile"]
    pod["containers"][0]["securityContext"] = {}
    assert restricted_violations(manifest) == []
    pod["hostNetwork"] = True
    assert [v.control for v in restricted_violations(manifest)] == ["hostNamespaces"]


def test_a_user_namespace_may_run_as_root_inside_but_not_unmask_proc() -> None:
    manifest = deployment()
    pod = _pod(manifest)
    pod["hostUsers"] = False
    pod["securityContext"].update(runAsUser=0, runAsNonRoot=False)
    assert restricted_violations(manifest) == []
    pod["containers"][0]["securityContext"]["procMount"] = "Unmasked"
    assert [v.path for v in restricted_violations(manifest)] == [f"{SC}.procMount"]


def test_every_kind_with_a_pod_template_is_checked_at_its_own_path() -> None:
    bad = _pod(deployment())
    bad["hostPID"] = True
    job = {"spec": {"template": {"spec": bad}}}
    cron = {"kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": job}}
    pod = {"kind": "Pod", "metadata": {"name": "p"}, "spec": bad}
    assert [v.path for v in restricted_violations(cron)] == ["spec.jobTemplate.spec.template.spec.hostPID"]
    assert [v.path for v in restricted_violations(pod)] == ["spec.hostPID"]
    ephemeral = copy.deepcopy(pod)
    ephemeral["spec"]["hostPID"] = False
    ephemeral["spec"]["ephemeralContainers"] = [{"name": "debug", "securityContext": {"privileged": True}}]
    paths = {v.path for v in restricted_violations(ephemeral)}
    assert "spec.ephemeralContainers[0].securityContext.privileged" in paths
    assert "spec.ephemeralContainers[0].securityContext.allowPrivilegeEscalation" in paths
    assert list(pod_templates({"kind": "Service", "spec": {}})) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_delete("containers.0.securityContext.readOnlyRootFilesystem"), f"{SC}.readOnlyRootFilesystem"),
        (_delete("containers.0.resources.limits"), f"{C}.resources.limits.memory"),
        (_delete("containers.0.resources.requests"), f"{C}.resources.requests.cpu"),
        (_delete("automountServiceAccountToken"), f"{P}.automountServiceAccountToken"),
        (_set("serviceAccountName", "default"), f"{P}.serviceAccountName"),
        (_delete("enableServiceLinks"), f"{P}.enableServiceLinks"),
    ],
    ids=["writable root", "no limits", "no requests", "token mounted", "default service account", "service links"],
)
def test_hardening_refuses_what_the_project_does_not_allow(
    change: Callable[[dict[str, Any]], None], field: str
) -> None:
    manifest = deployment()
    change(manifest)
    assert restricted_violations(manifest) == []  # the standard itself does not ask for these
    assert field in [v.path for v in hardening_violations(manifest)]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = deployment(), deployment()
    _set("hostNetwork", True)(bad)
    (tmp_path / "good.yaml").write_text(yaml.safe_dump_all([good, {"kind": "Service", "metadata": {"name": "s"}}]))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main([str(tmp_path / "good.yaml"), "--hardened"]) == 0
    assert "1 pod templates in 2 manifests, restricted and hardened: all pass" in capsys.readouterr().err
    assert main([str(tmp_path / "bad.yaml")]) == 1
    assert "Deployment/relay: spec.template.spec.hostNetwork: must be unset or false" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.yaml")]) == 2
    # as a module, reading standard input
    result = subprocess.run(
        [sys.executable, "-m", "gitstafette.k8s.pod_security", "-"],
        input=yaml.safe_dump(bad),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "spec.template.spec.hostNetwork" in result.stdout
