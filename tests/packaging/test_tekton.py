"""``deploy/tekton``: every Task and the Pipeline validate against Tekton's own CRD schemas (strict about
unknown fields), the Pipeline's references resolve (tasks, their params and workspaces, runAfter, results),
and every step and sidecar would run under the restricted Pod Security Standard, as root nowhere."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gitstafette.k8s.pod_security import restricted_violations
from tests.schemas import crd_schema
from tests.utils import ROOT

TEKTON = ROOT / "deploy" / "tekton"
SCHEMAS = {"Task": "tekton-task-crd.yaml", "Pipeline": "tekton-pipeline-crd.yaml"}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, document) for path in sorted(TEKTON.glob("*.yaml")) for document in yaml.safe_load_all(path.read_text())
    ]


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"].get("name", path.name): d for path, d in documents() if d["kind"] == kind}


TASKS = of_kind("Task")
(PIPELINE,) = of_kind("Pipeline").values()
(PIPELINE_RUN,) = of_kind("PipelineRun").values()


def as_pod(task: Mapping[str, Any], pod_security: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The pod a TaskRun of ``task`` makes, as far as its security goes: the steps (stepTemplate merged in,
    as Tekton merges it) and the sidecars as containers."""
    spec = task["spec"]
    template = spec.get("stepTemplate", {})
    steps = [{**template, **step} for step in spec["steps"]]
    pod_spec: dict[str, Any] = {"containers": steps + list(spec.get("sidecars", []))}
    if pod_security is not None:
        pod_spec["securityContext"] = dict(pod_security)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": task["metadata"]["name"]}, "spec": pod_spec}


def test_the_folder_holds_the_pipeline_and_its_tasks() -> None:
    kinds = sorted(d["kind"] for _, d in documents())
    assert kinds == ["Pipeline", "PipelineRun", *["Task"] * 5]
    assert {d["apiVersion"] for _, d in documents()} == {"tekton.dev/v1"}


@pytest.mark.parametrize("path", sorted(TEKTON.glob("*.yaml")), ids=lambda p: p.name)
def test_it_validates_against_the_tekton_crd_schema(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        if document["kind"] not in SCHEMAS:  # PipelineRun: no schema in ../shared/schemas, checked below
            continue
        jsonschema.validate(document, crd_schema(SCHEMAS[document["kind"]], "v1"))


def test_the_schemas_are_strict() -> None:
    task = copy.deepcopy(TASKS["gitstafette-build"])
    task["spec"]["steps"][0]["securityContxt"] = {}
    with pytest.raises(jsonschema.ValidationError, match="securityContxt"):
        jsonschema.validate(task, crd_schema(SCHEMAS["Task"], "v1"))
    pipeline = copy.deepcopy(PIPELINE)
    pipeline["spec"]["tasks"][0]["runafter"] = ["x"]
    with pytest.raises(jsonschema.ValidationError, match="runafter"):
        jsonschema.validate(pipeline, crd_schema(SCHEMAS["Pipeline"], "v1"))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_step_runs_restricted_and_not_as_root(name: str) -> None:
    """Each step and sidecar on its own, without help from a pod-level securityContext (a PipelineRun may
    set none), and under the example PipelineRun's."""
    task = TASKS[name]
    assert restricted_violations(as_pod(task)) == []
    pod_security = PIPELINE_RUN["spec"]["taskRunTemplate"]["podTemplate"]["securityContext"]
    assert restricted_violations(as_pod(task, pod_security)) == []
    for container in as_pod(task)["spec"]["containers"]:
        assert container["securityContext"]["runAsUser"] > 0, container["name"]


def test_a_root_step_is_caught() -> None:
    task = copy.deepcopy(TASKS["gitstafette-push"])
    task["spec"]["steps"][0]["securityContext"]["runAsUser"] = 0
    del task["spec"]["steps"][0]["securityContext"]["capabilities"]
    found = {(v.path, v.control) for v in restricted_violations(as_pod(task))}
    assert ("spec.containers[0].securityContext.runAsUser", "runAsUser") in found
    assert any(control == "capabilities_restricted" for _, control in found), found


def test_the_pipeline_references_resolve() -> None:
    spec = PIPELINE["spec"]
    names = [t["name"] for t in spec["tasks"]]
    pipeline_params = {p["name"] for p in spec["params"]}
    pipeline_workspaces = {w["name"] for w in spec["workspaces"]}
    for pipeline_task in spec["tasks"]:
        task = TASKS[pipeline_task["taskRef"]["name"]]["spec"]
        declared = {p["name"]: p for p in task.get("params", [])}
        given = {p["name"] for p in pipeline_task.get("params", [])}
        assert given <= set(declared), pipeline_task["name"]
        required = {name for name, p in declared.items() if "default" not in p}
        assert required <= given, (pipeline_task["name"], required - given)
        bound = {w["name"]: w["workspace"] for w in pipeline_task.get("workspaces", [])}
        assert set(bound) == {w["name"] for w in task.get("workspaces", [])}, pipeline_task["name"]
        assert set(bound.values()) <= pipeline_workspaces
        assert set(pipeline_task.get("runAfter", [])) <= set(names[: names.index(pipeline_task["name"])])
        for param in pipeline_task.get("params", []):
            if param["value"].startswith("$(params."):
                assert param["value"][len("$(params.") : -1] in pipeline_params
    # push last, after the scan: nothing reaches the registry unscanned
    assert [t.get("runAfter", []) for t in spec["tasks"]] == [[], ["test"], ["build"], ["sbom"], ["scan"]]
    for result in spec["results"]:
        _, task_name, _, result_name = result["value"].strip("$()").split(".")
        task = TASKS[next(t["taskRef"]["name"] for t in spec["tasks"] if t["name"] == task_name)]
        assert result_name in {r["name"] for r in task["spec"]["results"]}


def test_the_pipeline_run_fits_the_pipeline() -> None:
    spec = PIPELINE_RUN["spec"]
    assert spec["pipelineRef"]["name"] == PIPELINE["metadata"]["name"]
    declared = {p["name"]: p for p in PIPELINE["spec"]["params"]}
    given = {p["name"] for p in spec["params"]}
    assert given <= set(declared)
    assert {name for name, p in declared.items() if "default" not in p} <= given
    assert {w["name"] for w in spec["workspaces"]} == {w["name"] for w in PIPELINE["spec"]["workspaces"]}


def test_the_sbom_task_runs_the_script_with_flags_it_has() -> None:
    """The pipeline's SBOM and scan steps call scripts/sbom.py; each flag they pass is one it defines."""
    script_source = (ROOT / "scripts" / "sbom.py").read_text()
    for name in ("gitstafette-sbom", "gitstafette-scan"):
        for step in TASKS[name]["spec"]["steps"]:
            for line in step.get("script", "").splitlines():
                if "scripts/sbom.py" in line:
                    flags = [word for word in line.split() if word.startswith("--")]
                    assert flags
                    for flag in flags:
                        assert f'"{flag}"' in script_source, (name, flag)
