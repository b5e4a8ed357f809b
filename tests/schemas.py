"""The custom resource schemas in ``../shared/schemas`` (beside the repository), as jsonschema validates
them: strict about unknown fields, as a Kubernetes API server is where it prunes them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.utils import ROOT


def _shared_schemas() -> Path:
    """``shared/schemas`` beside this checkout, or beside the checkout it was cloned from (a clean clone made in
    a temporary folder to run ``.ci/run``); ``GITSTAFETTE_SHARED_SCHEMAS`` names another folder."""
    if os.environ.get("GITSTAFETTE_SHARED_SCHEMAS"):
        return Path(os.environ["GITSTAFETTE_SHARED_SCHEMAS"])
    beside = ROOT.parent / "shared" / "schemas"
    origin = subprocess.run(
        ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"], capture_output=True, text=True
    ).stdout.strip()
    for candidate in (beside, Path(origin).parent / "shared" / "schemas" if origin else None):
        if candidate is not None and candidate.is_dir():
            return candidate
    return beside  # missing: the tests fail naming this path


SCHEMAS = _shared_schemas()


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields refused wherever Kubernetes would prune them (no
    x-kubernetes-preserve-unknown-fields): a misspelt field fails here instead of vanishing on apply."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_schema(file: str, version: str, kind: str | None = None) -> Any:
    """The strict openAPIV3Schema of ``version`` of the CRD in ``file`` (of ``kind``, when it holds several)."""
    for crd in yaml.safe_load_all((SCHEMAS / file).read_text()):
        if crd and (kind is None or crd["spec"]["names"]["kind"] == kind):
            (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
            return strict(served["schema"]["openAPIV3Schema"])
    raise LookupError(f"no {kind or 'CRD'} in {file}")
