"""``deploy/carvel``: the package repository's layout, its PackageMetadata and Packages against
kapp-controller's CRD schemas (Package and PackageMetadata are served by an aggregated API with the specs of
InternalPackage and InternalPackageMetadata), each values schema a valid OpenAPI v3 schema that accepts the
example values and refuses bad ones with a message naming the field, and the install examples."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

import gitstafette
from tests.deploy.tools import tool
from tests.schemas import crd_schema
from tests.utils import ROOT

CARVEL = ROOT / "deploy" / "carvel"
PACKAGES = CARVEL / "repo" / "packages"
CRDS = "kapp-controller-crds.yml"
#: the CRD whose schema each kind has
SCHEMA_KINDS = {
    "Package": "InternalPackage",
    "PackageMetadata": "InternalPackageMetadata",
    "PackageRepository": "PackageRepository",
    "PackageInstall": "PackageInstall",
}
REF_NAMES = ("server.gitstafette.dev", "client.gitstafette.dev")


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def package(ref_name: str) -> dict[str, Any]:
    (document,) = load(PACKAGES / ref_name / f"{gitstafette.__version__}.yml")
    return document


def values_schema(ref_name: str) -> dict[str, Any]:
    schema: dict[str, Any] = package(ref_name)["spec"]["valuesSchema"]["openAPIv3"]
    return schema


def example_values(ref_name: str) -> dict[str, Any]:
    component = ref_name.split(".")[0]
    (secret,) = [d for d in load(CARVEL / "examples" / f"{component}-install.yml") if d["kind"] == "Secret"]
    values: dict[str, Any] = yaml.safe_load(secret["stringData"]["values.yml"])
    return values


def values_errors(ref_name: str, values: Any) -> list[str]:
    validator = OAS30Validator(values_schema(ref_name))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(values)]


def every_document() -> list[tuple[str, dict[str, Any]]]:
    return [(str(p.relative_to(CARVEL)), d) for p in sorted(CARVEL.rglob("*.yml")) for d in load(p)]


def test_the_repository_layout() -> None:
    """packages/<refName>/metadata.yml and <version>.yml, names as kapp-controller expects them."""
    assert sorted(p.name for p in PACKAGES.iterdir()) == sorted(REF_NAMES)
    for ref_name in REF_NAMES:
        files = sorted(p.name for p in (PACKAGES / ref_name).iterdir())
        assert files == sorted(["metadata.yml", f"{gitstafette.__version__}.yml"])
        (metadata,) = load(PACKAGES / ref_name / "metadata.yml")
        assert (metadata["kind"], metadata["metadata"]["name"]) == ("PackageMetadata", ref_name)
        document = package(ref_name)
        assert document["metadata"]["name"] == f"{ref_name}.{gitstafette.__version__}"
        assert (document["spec"]["refName"], document["spec"]["version"]) == (ref_name, gitstafette.__version__)
        steps = [next(iter(step)) for step in document["spec"]["template"]["spec"]["template"]]
        assert steps == ["ytt", "kbld"]  # kapp-controller runs neither kustomize nor jsonnet


@pytest.mark.parametrize("name,document", every_document(), ids=lambda v: v if isinstance(v, str) else "")
def test_it_validates_against_the_kapp_controller_schema(name: str, document: dict[str, Any]) -> None:
    if document["kind"] not in SCHEMA_KINDS:
        assert document["kind"] == "Secret"  # core kinds: below, with kubernetes-validate
        return
    jsonschema.validate(document, crd_schema(CRDS, "v1alpha1", SCHEMA_KINDS[document["kind"]]))


def test_the_kapp_controller_schema_is_strict() -> None:
    broken = copy.deepcopy(package(REF_NAMES[0]))
    broken["spec"]["valueSchema"] = broken["spec"].pop("valuesSchema")
    with pytest.raises(jsonschema.ValidationError, match="valueSchema"):
        jsonschema.validate(broken, crd_schema(CRDS, "v1alpha1", "InternalPackage"))


@pytest.mark.parametrize("ref_name", REF_NAMES)
def test_the_values_schema_is_valid_openapi_v3(ref_name: str) -> None:
    def document(schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "openapi": "3.0.3",
            "info": {"title": ref_name, "version": gitstafette.__version__},
            "paths": {},
            "components": {"schemas": {"values": schema}},
        }

    validate_openapi(document(values_schema(ref_name)))
    broken = copy.deepcopy(values_schema(ref_name))
    broken["properties"]["replicas"]["type"] = "int"
    with pytest.raises(OpenAPIValidationError):
        validate_openapi(document(broken))


@pytest.mark.parametrize("ref_name", REF_NAMES)
def test_the_example_values_are_accepted(ref_name: str) -> None:
    assert values_errors(ref_name, example_values(ref_name)) == []


@pytest.mark.parametrize("ref_name", REF_NAMES)
def test_bad_values_are_refused_with_a_clear_message(ref_name: str) -> None:
    wrong_type = {**example_values(ref_name), "replicas": "3"}
    assert values_errors(ref_name, wrong_type) == ["replicas: '3' is not of type 'integer'"]
    unknown = {**example_values(ref_name), "replica": 3}
    (message,) = values_errors(ref_name, unknown)
    assert "'replica' was unexpected" in message
    nested = copy.deepcopy(example_values(ref_name))
    nested.setdefault("resources", {}).setdefault("limits", {})["gpu"] = "1"
    (message,) = values_errors(ref_name, nested)
    assert message.startswith("resources.limits: ") and "'gpu' was unexpected" in message


def test_the_client_needs_its_server_and_target() -> None:
    assert values_errors("client.gitstafette.dev", {}) == [
        "(top): 'server' is a required property",
        "(top): 'target' is a required property",
    ]
    values = {**example_values("client.gitstafette.dev"), "target": "jenkins:8080"}
    (message,) = values_errors("client.gitstafette.dev", values)
    assert message.startswith("target: ")


def test_the_installs_name_the_packages_and_their_values() -> None:
    for component in ("server", "client"):
        documents = load(CARVEL / "examples" / f"{component}-install.yml")
        (install,) = [d for d in documents if d["kind"] == "PackageInstall"]
        (secret,) = [d for d in documents if d["kind"] == "Secret"]
        assert install["spec"]["packageRef"]["refName"] == f"{component}.gitstafette.dev"
        assert install["spec"]["packageRef"]["versionSelection"]["constraints"] == gitstafette.__version__
        assert install["spec"]["values"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
        assert secret["metadata"]["namespace"] == install["metadata"]["namespace"]


def test_the_values_secrets_validate_strictly(tmp_path: Path) -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate, part of the test extra")
    secrets = [d for _, d in every_document() if d["kind"] == "Secret"]
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump_all(secrets))
    result = subprocess.run([validate, "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if " passed for resource " in line]) == len(secrets)
