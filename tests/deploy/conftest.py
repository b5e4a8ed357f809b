"""The image, built once a session by scripts/build-image.sh (a local Debian base, buildah), and how to
run it with podman."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.deploy.tools import ROOT, require_root, tool

#: the tag the tests build (not the script's default, localhost/gitstafette:dev, which may be yours)
TEST_IMAGE = "localhost/gitstafette:test"
#: a first build on a new machine: debootstrap (~2 min), then the image (~1.5 min with overlay storage)
BUILD_TIMEOUT_S = 1200
#: rlimits for `podman run`: this kind of machine refuses a container its own limits or more (crun and runc
#: fail with "setrlimit … Operation not permitted") but grants lower ones; a pod gets its runtime's anyway
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")

_built: list[BuiltImage] = []


@dataclass(frozen=True)
class BuiltImage:
    """The image the session built, with the storage flags that reach it."""

    image: str
    id: str
    size_bytes: int
    seconds: int
    storage_root: str
    storage_driver: str

    def podman(self, *args: str) -> list[str]:
        command = [shutil.which("podman") or "podman", "--root", self.storage_root]
        command += ["--storage-driver", self.storage_driver]
        # crun refuses this kind of machine's hybrid cgroups (v1 controllers beside an empty v2); runc runs.
        if shutil.which("runc"):
            command += ["--runtime", "runc"]
        return [*command, *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.podman(*args), capture_output=True, text=True, timeout=timeout)

    def config(self) -> dict[str, Any]:
        """The OCI image configuration (`podman image inspect`): User, Entrypoint, Labels, …"""
        result = self.run("image", "inspect", self.image)
        assert result.returncode == 0, result.stderr
        inspected: dict[str, Any] = json.loads(result.stdout)[0]
        return inspected


@pytest.fixture(scope="session")
def image() -> BuiltImage:
    """scripts/build-image.sh, once a session; a failed build fails every test that needs the image."""
    require_root("building the image (debootstrap, container storage)")
    for name in ("buildah", "podman", "debootstrap"):
        tool(name, "apt-get install buildah podman debootstrap runc")
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh")],
        env={**os.environ, "GITSTAFETTE_IMAGE": TEST_IMAGE},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed ({result.returncode}):\n{result.stderr[-4000:]}", pytrace=False)
    built = BuiltImage(**json.loads(result.stdout.strip().splitlines()[-1]))
    assert built.image == TEST_IMAGE
    _built.append(built)
    print(f"built {built.image} in {time.monotonic() - started:.0f} s")
    return built


@pytest.fixture
def container_names(image: BuiltImage) -> Iterator[list[str]]:
    """Names for containers of a test; each is removed afterwards, whatever state it is in."""
    names: list[str] = []
    yield names
    for name in reversed(names):  # a container that joined another's network goes first
        result = image.run("rm", "--force", "--time", "0", name)
        assert result.returncode == 0, result.stderr


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for built in _built:
        terminalreporter.write_line(
            f"gitstafette image {built.image}: {built.size_bytes / 1e6:.0f} MB, "
            f"build step {built.seconds} s ({built.storage_driver} storage)"
        )
