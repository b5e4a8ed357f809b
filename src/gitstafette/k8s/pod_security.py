"""The Pod Security Standards' "restricted" profile (with all of "baseline"), checked on manifests as dicts.

Pure functions over what ``yaml.safe_load_all`` gives for Kubernetes manifests: every kind that holds a pod
template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob,
PodTemplate) is checked, its containers, init containers and ephemeral containers alike. The controls and
their allowed values are those of Kubernetes' own admission plugin (k8s.io/pod-security-admission,
``policy/check_*.go``) for the newest version, 1.37, including the ones general-purpose scanners tend to
miss: hostPath, host ports, sysctls outside the safe set, procMount, probe and lifecycle hosts, SELinux
types, AppArmor and seccomp annotations. As there, Windows pods (``spec.os.name: windows``) are exempt from
the Linux-only restricted controls, and pods in a user namespace (``hostUsers: false``) may run as root
inside it.

Each finding names the field: ``Violation.path`` is where it is, from the manifest's top
(``spec.template.spec.containers[0].securityContext.privileged``).

``hardening_violations`` adds what this project asks of its own pods beyond the standard (a read-only root,
resource requests and limits, no service account token, service links off).

    python -m gitstafette.k8s.pod_security [--hardened] FILE…      # "-" reads standard input
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["Violation", "hardening_violations", "main", "pod_templates", "restricted_violations"]

#: where each kind keeps its pod template (metadata and spec), from the manifest's top
TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "PodTemplate": ("template",),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")

#: capabilities baseline lets a container add (the container runtimes' defaults)
BASELINE_CAPABILITIES = frozenset(
    "AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD NET_BIND_SERVICE SETFCAP SETGID SETPCAP SETUID "
    "SYS_CHROOT".split()
)
#: namespaced sysctls that cannot reach other pods (policy/check_sysctls.go, the 1.37 set)
SAFE_SYSCTLS = frozenset(
    """kernel.shm_rmid_forced net.ipv4.ip_local_port_range net.ipv4.tcp_syncookies net.ipv4.ping_group_range
    net.ipv4.ip_unprivileged_port_start net.ipv4.ip_local_reserved_ports net.ipv4.tcp_keepalive_time
    net.ipv4.tcp_fin_timeout net.ipv4.tcp_keepalive_intvl net.ipv4.tcp_keepalive_probes net.ipv4.tcp_rmem
    net.ipv4.tcp_wmem net.ipv4.tcp_slow_start_after_idle net.ipv4.tcp_notsent_lowat""".split()
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
#: the volume types restricted allows: the core ones, and whatever a PersistentVolume (or CSI) provides
RESTRICTED_VOLUMES = frozenset(
    "configMap csi downwardAPI emptyDir ephemeral image persistentVolumeClaim projected secret".split()
)
SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_POD_ANNOTATION = "seccomp.security.alpha.kubernetes.io/pod"
SECCOMP_CONTAINER_ANNOTATION = "container.seccomp.security.alpha.kubernetes.io/"
HANDLERS = ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle.postStart", "lifecycle.preStop")


@dataclass(frozen=True)
class Violation:
    """One field of one manifest that the profile forbids."""

    #: ``Kind/name`` of the manifest
    resource: str
    #: the field, from the manifest's top: ``spec.template.spec.containers[0].securityContext.privileged``
    path: str
    #: the control of the standard (or of ``hardening_violations``), as its upstream check id
    control: str
    message: str

    def __str__(self) -> str:
        return f"{self.resource}: {self.path}: {self.message} [{self.control}]"


Finding = tuple[str, str, str]  # path below the pod template, control, message
_Check = Callable[["_Pod"], Iterator[Finding]]


@dataclass(frozen=True)
class _Pod:
    """A pod template: its metadata and spec, and the containers of all three lists with their paths."""

    metadata: Mapping[str, Any]
    spec: Mapping[str, Any]

    @property
    def context(self) -> Mapping[str, Any]:
        return self.spec.get("securityContext") or {}

    @property
    def windows(self) -> bool:
        return (self.spec.get("os") or {}).get("name") == "windows"

    @property
    def user_namespace(self) -> bool:
        return self.spec.get("hostUsers") is False

    def containers(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        for kind in CONTAINER_LISTS:
            for index, container in enumerate(self.spec.get(kind) or []):
                yield f"spec.{kind}[{index}]", container

    def contexts(self) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """Each container's securityContext (empty when unset), with its path."""
        for path, container in self.containers():
            yield f"{path}.securityContext", container.get("securityContext") or {}


def _dig(value: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


# ---- baseline ------------------------------------------------------------------------------------------


def _host_process(pod: _Pod) -> Iterator[Finding]:
    contexts = [("spec.securityContext", pod.context), *pod.contexts()]
    for path, context in contexts:
        if _dig(context, "windowsOptions.hostProcess"):
            yield f"{path}.windowsOptions.hostProcess", "windowsHostProcess", "must be unset or false"


def _host_namespaces(pod: _Pod) -> Iterator[Finding]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.spec.get(field):
            yield f"spec.{field}", "hostNamespaces", "must be unset or false: no host namespace"


def _privileged(pod: _Pod) -> Iterator[Finding]:
    for path, context in pod.contexts():
        if context.get("privileged"):
            yield f"{path}.privileged", "privileged", "must be unset or false"


def _capabilities_baseline(pod: _Pod) -> Iterator[Finding]:
    for path, context in pod.contexts():
        for index, capability in enumerate(_dig(context, "capabilities.add") or []):
            if capability not in BASELINE_CAPABILITIES:
                yield f"{path}.capabilities.add[{index}]", "capabilities_baseline", f"adds {capability}"


def _host_path_volumes(pod: _Pod) -> Iterator[Finding]:
    for index, volume in enumerate(pod.spec.get("volumes") or []):
        if "hostPath" in volume:
            yield f"spec.volumes[{index}].hostPath", "hostPathVolumes", f"volume {volume.get('name')!r} is a hostPath"


def _host_ports(pod: _Pod) -> Iterator[Finding]:
    for path, container in pod.containers():
        for index, port in enumerate(container.get("ports") or []):
            if port.get("hostPort"):
                yield f"{path}.ports[{index}].hostPort", "hostPorts", f"must be unset or 0, not {port['hostPort']}"


def _app_armor(pod: _Pod) -> Iterator[Finding]:
    for path, context in [("spec.securityContext", pod.context), *pod.contexts()]:
        kind = _dig(context, "appArmorProfile.type")
        if kind is not None and kind not in ("RuntimeDefault", "Localhost"):
            yield f"{path}.appArmorProfile.type", "appArmorProfile", f"must be RuntimeDefault or Localhost, not {kind}"
    for key, value in (pod.metadata.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and value not in ("", "runtime/default"):
            if not str(value).startswith("localhost/"):
                yield f"metadata.annotations[{key}]", "appArmorProfile", "must be runtime/default or localhost/*"


def _se_linux(pod: _Pod) -> Iterator[Finding]:
    for path, context in [("spec.securityContext", pod.context), *pod.contexts()]:
        options = context.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            yield f"{path}.seLinuxOptions.type", "seLinuxOptions", f"{options['type']} is not a container type"
        for field in ("user", "role"):
            if options.get(field):
                yield f"{path}.seLinuxOptions.{field}", "seLinuxOptions", "must be unset"


def _proc_mount(pod: _Pod) -> Iterator[Finding]:
    # restricted keeps this for pods in a user namespace too (policy/check_procMount_restricted.go)
    for path, context in pod.contexts():
        if context.get("procMount", "Default") != "Default":
            yield f"{path}.procMount", "procMount", f"must be unset or Default, not {context['procMount']}"


def _seccomp_baseline(pod: _Pod) -> Iterator[Finding]:
    for path, context in [("spec.securityContext", pod.context), *pod.contexts()]:
        kind = _dig(context, "seccompProfile.type")
        if kind is not None and kind not in SECCOMP_TYPES:
            message = f"must be RuntimeDefault or Localhost, not {kind}"
            yield f"{path}.seccompProfile.type", "seccompProfile_baseline", message
    for key, value in (pod.metadata.get("annotations") or {}).items():
        if key == SECCOMP_POD_ANNOTATION or key.startswith(SECCOMP_CONTAINER_ANNOTATION):
            if value not in ("runtime/default", "docker/default") and not str(value).startswith("localhost/"):
                yield f"metadata.annotations[{key}]", "seccompProfile_baseline", f"{value} is not allowed"


def _sysctls(pod: _Pod) -> Iterator[Finding]:
    for index, sysctl in enumerate(pod.context.get("sysctls") or []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            yield f"spec.securityContext.sysctls[{index}].name", "sysctls", f"{sysctl.get('name')} is not a safe sysctl"


def _probe_hosts(pod: _Pod) -> Iterator[Finding]:
    for path, container in pod.containers():
        for handler in HANDLERS:
            for action in ("httpGet", "tcpSocket"):
                if _dig(container, f"{handler}.{action}.host"):
                    yield f"{path}.{handler}.{action}.host", "hostProbesAndHostLifecycle", "must be unset"


# ---- restricted ----------------------------------------------------------------------------------------


def _volume_types(pod: _Pod) -> Iterator[Finding]:
    for index, volume in enumerate(pod.spec.get("volumes") or []):
        for kind in sorted(set(volume) - {"name"} - RESTRICTED_VOLUMES):
            yield f"spec.volumes[{index}].{kind}", "restrictedVolumes", f"{kind} volumes are not allowed"


def _privilege_escalation(pod: _Pod) -> Iterator[Finding]:
    if pod.windows:
        return
    for path, context in pod.contexts():
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"{path}.allowPrivilegeEscalation", "allowPrivilegeEscalation", "must be false"


def _run_as_non_root(pod: _Pod) -> Iterator[Finding]:
    if pod.user_namespace:
        return
    pod_level = pod.context.get("runAsNonRoot")
    if pod_level is False:
        yield "spec.securityContext.runAsNonRoot", "runAsNonRoot", "must be true"
    for path, context in pod.contexts():
        value = context.get("runAsNonRoot")
        if value is False or (value is None and pod_level is not True):
            yield f"{path}.runAsNonRoot", "runAsNonRoot", "must be true (here or in spec.securityContext)"


def _run_as_user(pod: _Pod) -> Iterator[Finding]:
    if pod.user_namespace:
        return
    for path, context in [("spec.securityContext", pod.context), *pod.contexts()]:
        if context.get("runAsUser") == 0:
            yield f"{path}.runAsUser", "runAsUser", "must not be 0 (root)"


def _seccomp_restricted(pod: _Pod) -> Iterator[Finding]:
    if pod.windows or _dig(pod.context, "seccompProfile.type") in SECCOMP_TYPES:
        return
    for path, context in pod.contexts():
        if _dig(context, "seccompProfile.type") is None:
            message = "must be RuntimeDefault or Localhost (here or in spec.securityContext)"
            yield f"{path}.seccompProfile.type", "seccompProfile_restricted", message


def _capabilities_restricted(pod: _Pod) -> Iterator[Finding]:
    if pod.windows:
        return
    for path, context in pod.contexts():
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield f"{path}.capabilities.drop", "capabilities_restricted", 'must include "ALL"'
        for index, capability in enumerate(capabilities.get("add") or []):
            if capability != "NET_BIND_SERVICE":
                yield f"{path}.capabilities.add[{index}]", "capabilities_restricted", f"adds {capability}"


RESTRICTED_CHECKS: tuple[_Check, ...] = (
    _host_process,
    _host_namespaces,
    _privileged,
    _capabilities_baseline,
    _host_path_volumes,
    _host_ports,
    _app_armor,
    _se_linux,
    _proc_mount,
    _seccomp_baseline,
    _sysctls,
    _probe_hosts,
    _volume_types,
    _privilege_escalation,
    _run_as_non_root,
    _run_as_user,
    _seccomp_restricted,
    _capabilities_restricted,
)


# ---- this project's hardening, beyond the standard -----------------------------------------------------


def _hardening(pod: _Pod) -> Iterator[Finding]:
    for path, context in pod.contexts():
        if context.get("readOnlyRootFilesystem") is not True:
            yield f"{path}.readOnlyRootFilesystem", "readOnlyRootFilesystem", "must be true"
    for path, container in pod.containers():
        if path.startswith("spec.ephemeralContainers"):
            continue  # they cannot have resources
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not _dig(container, f"resources.{kind}.{resource}"):
                    yield f"{path}.resources.{kind}.{resource}", "resources", "must be set"
    if pod.spec.get("automountServiceAccountToken") is not False:
        yield "spec.automountServiceAccountToken", "serviceAccountToken", "must be false"
    if pod.spec.get("serviceAccountName", "default") == "default":
        yield "spec.serviceAccountName", "serviceAccount", "must name the workload's own service account"
    if pod.spec.get("enableServiceLinks") is not False:
        # A Service named gitstafette-http would hand the pod GITSTAFETTE_HTTP_PORT=tcp://…: an option.
        yield "spec.enableServiceLinks", "enableServiceLinks", "must be false (service variables look like options)"


# ---- manifests -----------------------------------------------------------------------------------------


def pod_templates(manifest: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The pod template of a manifest, as (path prefix, {"metadata": …, "spec": …}); none for other kinds."""
    keys = TEMPLATE_PATHS.get(str(manifest.get("kind")))
    if keys is None:
        return
    template: Any = manifest
    for key in keys:
        template = template.get(key) if isinstance(template, Mapping) else None
    if isinstance(template, Mapping):
        yield "".join(f"{key}." for key in keys), template


def _violations(manifest: Mapping[str, Any], checks: Sequence[_Check]) -> list[Violation]:
    resource = f"{manifest.get('kind')}/{(manifest.get('metadata') or {}).get('name')}"
    found = []
    for prefix, template in pod_templates(manifest):
        pod = _Pod(template.get("metadata") or {}, template.get("spec") or {})
        for check in checks:
            found += [Violation(resource, prefix + path, control, message) for path, control, message in check(pod)]
    return found


def restricted_violations(manifest: Mapping[str, Any]) -> list[Violation]:
    """What the restricted profile refuses in ``manifest`` (nothing for kinds without a pod template)."""
    return _violations(manifest, RESTRICTED_CHECKS)


def hardening_violations(manifest: Mapping[str, Any]) -> list[Violation]:
    """The restricted profile's findings and this project's own: read-only root, resources, token, links."""
    return _violations(manifest, (*RESTRICTED_CHECKS, _hardening))


def _load(paths: Iterable[str]) -> Iterator[Mapping[str, Any]]:
    for path in paths:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        yield from (document for document in yaml.safe_load_all(text) if isinstance(document, Mapping))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gitstafette.k8s.pod_security",
        description="Check Kubernetes manifests against the restricted Pod Security Standard.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help='YAML manifests ("-": standard input)')
    parser.add_argument("--hardened", action="store_true", help="also this project's own hardening rules")
    args = parser.parse_args(argv)
    check = hardening_violations if args.hardened else restricted_violations
    try:
        manifests = list(_load(args.files))
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    templates = sum(1 for manifest in manifests for _ in pod_templates(manifest))
    found = [violation for manifest in manifests for violation in check(manifest)]
    for violation in found:
        print(violation)
    profile = "restricted" + (" and hardened" if args.hardened else "")
    verdict = f"{len(found)} violations" if found else "all pass"
    print(f"{templates} pod templates in {len(manifests)} manifests, {profile}: {verdict}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
