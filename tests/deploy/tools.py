"""The external tools of the deployment tests: found, or the test fails (GITSTAFETTE_REQUIRE_TOOLS=1, as in
CI) or is skipped with the reason and how to get the tool."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

#: set to 1 (CI does) to make a missing tool fail the tests that need it instead of skipping them
REQUIRE_TOOLS_ENV = "GITSTAFETTE_REQUIRE_TOOLS"

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"


def missing(reason: str) -> None:
    """Fail (GITSTAFETTE_REQUIRE_TOOLS=1) or skip the test, saying why."""
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_TOOLS_ENV}=1 says the deployment tests must run", pytrace=False)
    pytest.skip(f"{reason} (set {REQUIRE_TOOLS_ENV}=1 to make this a failure)")


def tool(name: str, how: str) -> str:
    """The path of the command ``name``: on PATH or beside this Python (a venv's bin); else missing()."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(beside) if beside.exists() else None)
    if found is None:
        missing(f"{name} is not installed ({how})")
    assert found is not None
    return found


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        missing(f"{what} needs root")
