"""scripts/sbom.py, really run: a CycloneDX 1.6 document of the runtime venv that the CycloneDX schema
accepts and that lists every runtime dependency of pyproject.toml (a version that satisfies it, a purl); an
SPDX 2.3 document of a file system that spdx-tools accepts; an audit that does not call "audited nothing" a
pass."""

from __future__ import annotations

import copy
import json
import subprocess
import tomllib
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import gitstafette
from tests.deploy.conftest import BuiltImage
from tests.deploy.tools import ROOT, tool
from tests.packaging.conftest import SbomRun, run_sbom

CYCLONEDX = "gitstafette.cdx.json"
SPDX = "gitstafette.spdx.json"


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def cyclonedx_errors(document: dict[str, Any]) -> str | None:
    """The CycloneDX 1.6 JSON schema's verdict (the copy cyclonedx-python-lib ships, used offline)."""
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(document))
    return None if error is None else str(getattr(error.data, "message", error))


def spdx_validate(path: Path) -> subprocess.CompletedProcess[str]:
    pyspdxtools = tool("pyspdxtools", "pip install -e '.[test]' installs PyPI spdx-tools")
    return subprocess.run([pyspdxtools, "--infile", str(path)], capture_output=True, text=True, timeout=300)


def spdx_purls(document: dict[str, Any]) -> set[str]:
    return {
        reference["referenceLocator"]
        for package in document["packages"]
        for reference in package.get("externalRefs", [])
        if reference["referenceType"] == "purl"
    }


def test_cyclonedx_validates_against_the_1_6_schema(sbom: SbomRun) -> None:
    document = sbom.document(CYCLONEDX)
    assert document["bomFormat"] == "CycloneDX"
    assert document["specVersion"] == "1.6"
    assert cyclonedx_errors(document) is None
    # and the schema is really applied: a component without its required name is refused
    broken = copy.deepcopy(document)
    del broken["components"][0]["name"]
    assert "'name' is a required property" in (cyclonedx_errors(broken) or "")


def test_cyclonedx_lists_every_runtime_dependency(sbom: SbomRun) -> None:
    document = sbom.document(CYCLONEDX)
    root = document["metadata"]["component"]
    assert (root["name"], root["version"]) == ("gitstafette", gitstafette.__version__)
    assert root["purl"] == f"pkg:pypi/gitstafette@{gitstafette.__version__}"
    components = {canonicalize_name(c["name"]): c for c in document["components"]}
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in components, f"{requirement} is not in the SBOM"
        component = components[name]
        version = component.get("version")
        assert version and requirement.specifier.contains(version, prereleases=True), (requirement, version)
        assert component.get("purl", "").split("?")[0] == f"pkg:pypi/{name}@{version}", component.get("purl")
    # nothing of the test extra: the SBOM is of what runs, not of what tests
    assert "pytest" not in components
    assert "grpcio-tools" not in components


def test_cyclonedx_matches_the_runtime_venv(sbom: SbomRun, runtime_venv: Path) -> None:
    """Every distribution installed in the venv is in the SBOM at its installed version, and no other."""
    site = next((runtime_venv / "lib").glob("python3*/site-packages"))
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions(path=[str(site)])}
    listed = {canonicalize_name(c["name"]): c["version"] for c in sbom.document(CYCLONEDX)["components"]}
    installed.pop("gitstafette")  # the root component, in metadata.component
    assert listed == installed


def test_spdx_validates_with_spdx_tools(sbom: SbomRun, tmp_path: Path) -> None:
    path = sbom.out / SPDX
    document = json.loads(path.read_text())
    assert document["spdxVersion"] == "SPDX-2.3"
    result = spdx_validate(path)
    assert result.returncode == 0, result.stderr[-4000:]
    # and the validator really validates: a malformed SPDX id is refused
    document["packages"][0]["SPDXID"] = "not an id"
    broken = tmp_path / "broken.spdx.json"
    broken.write_text(json.dumps(document))
    refused = spdx_validate(broken)
    assert refused.returncode != 0
    assert 'must begin with "SPDXRef-"' in refused.stdout + refused.stderr


def test_spdx_of_the_venv_finds_the_runtime_dependencies(sbom: SbomRun) -> None:
    purls = spdx_purls(sbom.document(SPDX))
    listed = {purl.split("@")[0] for purl in purls}
    for requirement in runtime_requirements():
        assert f"pkg:pypi/{canonicalize_name(requirement.name)}" in listed, requirement


def test_audit_offline_is_not_a_pass(sbom: SbomRun, runtime_venv: Path, tmp_path: Path) -> None:
    """The audit's status follows what pip-audit really audited; --require-audit fails when that was not all."""
    audit = sbom.document("audit.json")
    assert audit["distributions"] > len(runtime_requirements())
    assert audit["audited"] == audit["distributions"] - len(audit["skipped"])
    complete = audit["audited"] == audit["distributions"]
    assert audit["status"] == ("audited" if complete else "not-audited")
    assert sbom.summary["audit"] == audit["status"]
    if complete:  # online: nothing to say about the refusal below
        pytest.skip("pip-audit reached its vulnerability service: the offline case cannot be shown here")
    assert "vulnerability audit: NOT DONE" in sbom.stderr
    required = run_sbom(tmp_path, "--venv", str(runtime_venv), "--require-audit")
    assert required.returncode == 3, required.stderr[-2000:]
    assert required.summary["audit"] == "not-audited"


@pytest.mark.parametrize("source", ["mounted", "oci-archive"])
def test_spdx_of_the_image(source: str, image: BuiltImage, runtime_venv: Path, tmp_path: Path) -> None:
    """syft over the built image, mounted (its root file system) or saved as an OCI archive (what the Tekton
    pipeline scans): the Debian packages and the app's Python packages, in a document spdx-tools accepts."""
    if source == "mounted":
        flags = ["--image", image.image, "--storage-root", image.storage_root]
        flags += ["--storage-driver", image.storage_driver]
    else:
        archive = tmp_path / "image.tar"
        saved = image.run("save", "--format", "oci-archive", "--output", str(archive), image.image, timeout=600)
        assert saved.returncode == 0, saved.stderr
        flags = ["--oci-archive", str(archive)]
    run = run_sbom(tmp_path / "sbom", "--venv", str(runtime_venv), *flags)
    assert run.returncode == 0, run.stderr[-4000:]
    result = spdx_validate(tmp_path / "sbom" / SPDX)
    assert result.returncode == 0, result.stderr[-4000:]
    purls = {purl.split("@")[0] for purl in spdx_purls(run.document(SPDX))}
    assert "pkg:deb/debian/python3" in {p.split("?")[0] for p in purls}
    for requirement in runtime_requirements():
        assert f"pkg:pypi/{canonicalize_name(requirement.name)}" in purls, requirement
