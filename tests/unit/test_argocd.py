"""The Argo CD setup in examples/argocd: the MLBackend health check (Lua, run with Lua 5.1 as Argo
CD's gopher-lua speaks it) passes Argo CD's own health_test.yaml cases and judges the statuses the
operator really writes; the argocd-cm patch carries the same scripts; sync waves order the apps."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from prelabel_operator import status as status_module

ARGOCD = Path(__file__).resolve().parents[2] / "examples" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations"
MLBACKEND = CUSTOMIZATIONS / "prelabel.dev" / "MLBackend"
KUBE_VERSION = "1.36.3"  # the local control plane's (local/build/versions.env); Argo CD passes the cluster's


def health(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    """Runs a health.lua as Argo CD does: `obj` is a global, the chunk returns {status, message}."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script.read_text())
    return {"status": result["status"], "message": result["message"] or ""}


APPLICATION = CUSTOMIZATIONS / "argoproj.io" / "Application"
CASES = yaml.safe_load((MLBACKEND / "health_test.yaml").read_text())["tests"]
APPLICATION_CASES = yaml.safe_load((APPLICATION / "health_test.yaml").read_text())["tests"]
ALL_CASES = [(MLBACKEND, c) for c in CASES] + [(APPLICATION, c) for c in APPLICATION_CASES]


@pytest.mark.parametrize(("folder", "case"), ALL_CASES, ids=[f"{f.name}-{Path(c['inputPath']).stem}" for f, c in ALL_CASES])
def test_argocd_health_test_cases(folder: Path, case: dict) -> None:
    obj = yaml.safe_load((folder / case["inputPath"]).read_text())
    assert health(folder / "health.lua", obj) == case["healthStatus"]


def test_every_check_has_its_cases() -> None:
    """Argo CD's layout: each health.lua beside a health_test.yaml whose inputs all exist."""
    scripts = sorted(CUSTOMIZATIONS.glob("*/*/health.lua"))
    assert [s.parent for s in scripts] == sorted([MLBACKEND, APPLICATION])
    for folder, case in ALL_CASES:
        assert (folder / case["inputPath"]).is_file(), case


def test_the_cases_cover_each_state_argocd_shows() -> None:
    covered = {Path(c["inputPath"]).stem for c in CASES}
    assert {"healthy", "progressing", "degraded-secret-missing", "stale-generation", "deleting"} <= covered
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded"}
    covered = {Path(c["inputPath"]).stem for c in APPLICATION_CASES}
    assert {"no-status", "never-synced", "syncing", "retrying", "sync-failed", "healthy", "stale-after-sync"} <= covered


def resource_with(observed: status_module.Observed, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "yolo", "namespace": "labeling", "generation": generation},
            "status": status_module.status(observed, previous=None)}


@pytest.mark.parametrize(("observed", "expected"), [
    (status_module.Observed(1, available=True, url="http://10.0.0.1:9090",
                        projects=[status_module.ProjectStatus(1, "p", 5, "Connected", compatible=True)]), "Healthy"),
    (status_module.Observed(1), "Progressing"),  # pods still starting
    (status_module.Observed(1, available=True, url="http://10.0.0.1:9090", label_studio_error=("LabelStudioUnreachable", "down")), "Degraded"),
    (status_module.Observed(1, available=True, url="http://10.0.0.1:9090", label_studio_error=("Unauthorized", "bad key")), "Degraded"),
    (status_module.Observed(1, kube_error=("SecretMissing", "no Secret")), "Degraded"),
    (status_module.Observed(1, kube_error=("Forbidden", "may not apply services")), "Degraded"),
    (status_module.Observed(1, spec_error="bad spec"), "Degraded"),
    (status_module.Observed(1, available=True, url="http://10.0.0.1:9090",
                        projects=[status_module.ProjectStatus(2, "t", state="Error", message="found Labels", compatible=False)]), "Degraded"),
])
def test_statuses_the_operator_writes_are_judged(observed: status_module.Observed, expected: str) -> None:
    judged = health(MLBACKEND / "health.lua", resource_with(observed))
    assert judged["status"] == expected, judged
    ready = status_module.ready(status_module.conditions(observed))
    assert ready.reason in judged["message"] or expected == "Healthy"


def test_a_new_generation_is_progressing_until_the_operator_reports_it() -> None:
    observed = status_module.Observed(1, available=True, url="http://10.0.0.1:9090",
                                  projects=[status_module.ProjectStatus(1, "p", 5, "Connected", compatible=True)])
    stale = resource_with(observed, generation=2)
    assert health(MLBACKEND / "health.lua", stale) == {"status": "Progressing", "message": "Waiting for the operator to apply generation 2"}


def application(health_status: str | None, phase: str | None, sync: str = "Synced", retry_count: int = 0,
                compared: str = "2026-11-29T10:00:04Z") -> dict[str, Any]:
    status: dict[str, Any] = {"sync": {"status": sync}, "reconciledAt": compared}
    if health_status:
        status["health"] = {"status": health_status, "message": "from status.health"}
    if phase:
        status["operationState"] = {"phase": phase, "message": "from the operation", "retryCount": retry_count,
                                    "finishedAt": "2026-11-29T10:00:04Z"}
    return {"metadata": {"name": "child"}, "status": status}


RESOURCE_HEALTHS = [None, "Healthy", "Progressing", "Degraded", "Missing", "Suspended", "Unknown"]


@pytest.mark.parametrize("resources", RESOURCE_HEALTHS)
@pytest.mark.parametrize("sync", ["Synced", "OutOfSync"])
def test_a_failed_sync_is_never_healthy(resources: str | None, sync: str) -> None:
    """Whatever the applied part looks like, a child whose sync failed holds its wave back, visibly."""
    for phase in ("Failed", "Error"):
        judged = health(APPLICATION / "health.lua", application(resources, phase, sync, retry_count=5))
        assert judged == {"status": "Degraded", "message": f"Sync {phase}: from the operation"}


@pytest.mark.parametrize("resources", RESOURCE_HEALTHS)
def test_a_sync_in_progress_or_retrying_waits_and_never_fails_the_parent(resources: str | None) -> None:
    """Progressing (the parent waits) while a sync runs or waits for its retry: a transient failure
    must not fail the parent's sync, which Argo CD would not re-attempt on the same commit."""
    for retry_count in (0, 1, 4):
        judged = health(APPLICATION / "health.lua", application(resources, "Running", "OutOfSync", retry_count))
        assert judged["status"] == "Progressing", judged
        assert judged["message"].startswith("Retrying a failed sync: " if retry_count else "Syncing: ")


@pytest.mark.parametrize("resources", RESOURCE_HEALTHS)
def test_a_successful_sync_shows_the_health_of_its_resources(resources: str | None) -> None:
    """After a successful sync the resources decide (an OutOfSync diff alone never holds a wave back:
    that would deadlock on a field the API server rewrites)."""
    for sync in ("Synced", "OutOfSync"):
        judged = health(APPLICATION / "health.lua", application(resources, "Succeeded", sync))
        assert judged == ({"status": resources, "message": "from status.health"} if resources else
                          {"status": "Progressing", "message": "Waiting for the first sync"})
        stale = health(APPLICATION / "health.lua", application(resources, "Succeeded", sync, compared="2026-11-29T10:00:03Z"))
        assert stale == {"status": "Progressing", "message": "Waiting for the health after the sync"}


def test_the_argocd_cm_patch_carries_the_same_scripts() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())["data"]
    assert data["resource.customizations.health.prelabel.dev_MLBackend"] == (MLBACKEND / "health.lua").read_text()
    assert data["resource.customizations.health.argoproj.io_Application"] == (APPLICATION / "health.lua").read_text()


def root_resources() -> dict[tuple[str, str], dict[str, Any]]:
    """What root.yaml syncs: the documents under apps/, by (kind, name)."""
    docs = [yaml.safe_load(p.read_text()) for p in sorted((ARGOCD / "apps").glob("*.yaml"))]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def wave(obj: dict[str, Any]) -> int:
    return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_sync_waves_put_the_namespace_then_the_operator_then_the_mlbackends() -> None:
    resources = root_resources()
    apps = {name: d for (kind, name), d in resources.items() if kind == "Application"}
    namespace = resources[("Namespace", "labeling")]
    assert wave(namespace) < wave(apps["prelabel-operator"]) < wave(apps["prelabel-mlbackends"])
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert apps["prelabel-operator"]["spec"]["source"]["path"] == "charts/prelabel-operator"
    assert apps["prelabel-mlbackends"]["spec"]["destination"]["namespace"] == "labeling"
    for app in apps.values():
        assert "resources-finalizer.argocd.argoproj.io" in app["metadata"]["finalizers"]  # deletes cascade, MLBackends first
        assert (ARGOCD.parents[1] / app["spec"]["source"]["path"]).is_dir(), app["spec"]["source"]["path"]
    mlbackends = [yaml.safe_load(p.read_text()) for p in (ARGOCD / "mlbackends").glob("*.yaml")]
    assert mlbackends and all(m["kind"] == "MLBackend" for m in mlbackends)  # no Secret in Git


def test_retries_keep_the_waves_going() -> None:
    """Children retry a transient failure a few times (Progressing meanwhile), then show Degraded; the
    root retries without a limit, on the latest commit, so its waves go on once a child is fixed."""
    root = yaml.safe_load((ARGOCD / "root.yaml").read_text())
    assert root["spec"]["syncPolicy"]["retry"]["limit"] < 0 and root["spec"]["syncPolicy"]["retry"]["refresh"] is True
    for (kind, _), app in root_resources().items():
        if kind == "Application":
            retry = app["spec"]["syncPolicy"]["retry"]
            assert 0 < retry["limit"] <= 10 and retry["refresh"] is True


def test_each_wave_writes_only_into_namespaces_that_exist_by_then(cluster_bin: Path) -> None:
    """The operator app renders a Role and RoleBinding in each watched namespace: that namespace must
    come from an earlier wave (a namespace made by a later wave fails the first sync), or be the
    app's own destination with CreateNamespace."""
    resources = root_resources()
    namespaces = {name: wave(d) for (kind, name), d in resources.items() if kind == "Namespace"}
    for (kind, name), app in resources.items():
        if kind != "Application":
            continue
        source, destination = app["spec"]["source"], app["spec"]["destination"]
        path = ARGOCD.parents[1] / source["path"]
        if "helm" in source:
            helm = [str(cluster_bin / "helm"), "template", name, str(path), "-n", destination["namespace"], "--kube-version", KUBE_VERSION]
            values = yaml.safe_dump(source["helm"].get("valuesObject", {}))
            rendered = subprocess.run([*helm, "--values", "-"], input=values, capture_output=True, text=True, check=True).stdout
            docs = [d for d in yaml.safe_load_all(rendered) if d]
        else:
            docs = [d for p in sorted(path.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
        created_here = destination["namespace"] if "CreateNamespace=true" in app["spec"]["syncPolicy"].get("syncOptions", []) else None
        used = {d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")}
        assert used, name
        for namespace in used - {created_here}:
            assert namespace in namespaces, f"{name} writes into {namespace}, which no wave creates"
            assert namespaces[namespace] < wave(app), f"{name} (wave {wave(app)}) writes into {namespace} (wave {namespaces[namespace]})"


@pytest.mark.parametrize("phase", ["Progressing", "Failed", "Complete"])
def test_prelabeling_never_changes_the_health_only_the_message(phase: str) -> None:
    """A long run must not hold later sync waves back (they wait for Healthy); its progress shows in the message."""
    from prelabel_operator import prelabel

    progress = prelabel.Progress(model_version="prelabel-0123456789ab", total=200, counted=True,
                                 predicted={"Progressing": 180, "Failed": 199, "Complete": 200}[phase], failed=int(phase == "Failed"))
    observed = status_module.Observed(1, available=True, url="http://10.0.0.1:9090",
                                  projects=[status_module.ProjectStatus(1, "p", 5, "Connected", compatible=True)])
    observed.prelabel = prelabel.condition(prelabel.status(progress, 0.0), paused=False)
    resource = resource_with(observed)
    resource["status"]["prelabel"] = prelabel.status(progress, 0.0)
    judged = health(MLBACKEND / "health.lua", resource)
    assert judged["status"] == "Healthy" and judged["message"].endswith(f"pre-labeling {phase} {progress.predicted}/200"), judged


TRAINING_PHASES = ["Idle", "Waiting", "Training", "Evaluating", "Promoted", "Refused", "Failed"]


@pytest.mark.parametrize("phase", TRAINING_PHASES)
@pytest.mark.parametrize(("observed", "expected"), [
    (status_module.Observed(1, available=True, url="http://10.0.0.1:9090",
                            projects=[status_module.ProjectStatus(1, "p", 5, "Connected", compatible=True)]), "Healthy"),
    (status_module.Observed(1), "Progressing"),
    (status_module.Observed(1, kube_error=("SecretMissing", "no Secret")), "Degraded"),
], ids=["ready", "starting", "secret-missing"])
def test_training_never_changes_the_health(phase: str, observed: status_module.Observed, expected: str) -> None:
    """A run in progress must not hold later sync waves back (they wait for Healthy), and a failed or
    refused run leaves the serving model serving: not Degraded. Nor does training hide a real problem.
    status.training's shape: {phase, job, version, lastRun, history}."""
    resource = resource_with(observed)
    resource["status"]["training"] = {"phase": phase, "job": "yolo-train-3", "version": "20261130T054012.123Z-3f2a9c1b",
                                      "lastRun": {"job": "yolo-train-2"}, "history": [{"job": "yolo-train-2"}]}
    judged = health(MLBACKEND / "health.lua", resource)
    without = health(MLBACKEND / "health.lua", resource_with(observed))
    assert judged["status"] == expected == without["status"], judged
    if expected != "Healthy" or phase == "Idle":
        assert judged["message"] == without["message"]
    elif phase == "Promoted":
        assert judged["message"] == without["message"] + "; training Promoted 20261130T054012.123Z-3f2a9c1b"
    else:
        assert judged["message"] == without["message"] + f"; training {phase} (job yolo-train-3)"


def test_a_training_status_without_job_or_version_still_reads() -> None:
    observed = status_module.Observed(1, available=True, url="http://10.0.0.1:9090",
                                      projects=[status_module.ProjectStatus(1, "p", 5, "Connected", compatible=True)])
    resource = resource_with(observed)
    resource["status"]["training"] = {"phase": "Promoted"}
    plain = health(MLBACKEND / "health.lua", resource_with(observed))["message"]
    assert health(MLBACKEND / "health.lua", resource) == {"status": "Healthy", "message": plain + "; training Promoted"}
