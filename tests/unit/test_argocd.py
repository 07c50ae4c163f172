"""The Argo CD setup in examples/argocd: the MLBackend health check (Lua, run with Lua 5.1 as Argo
CD's gopher-lua speaks it) passes Argo CD's own health_test.yaml cases and judges the statuses the
operator really writes; the argocd-cm patch carries the same scripts; sync waves order the apps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from prelabel_operator import reconcile

ARGOCD = Path(__file__).resolve().parents[2] / "examples" / "argocd"
CUSTOMIZATIONS = ARGOCD / "resource_customizations"
MLBACKEND = CUSTOMIZATIONS / "prelabel.dev" / "MLBackend"


def health(script: Path, obj: dict[str, Any]) -> dict[str, str]:
    """Runs a health.lua as Argo CD does: `obj` is a global, the chunk returns {status, message}."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script.read_text())
    return {"status": result["status"], "message": result["message"] or ""}


CASES = yaml.safe_load((MLBACKEND / "health_test.yaml").read_text())["tests"]


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_argocd_health_test_cases(case: dict) -> None:
    obj = yaml.safe_load((MLBACKEND / case["inputPath"]).read_text())
    assert health(MLBACKEND / "health.lua", obj) == case["healthStatus"]


def test_the_cases_cover_each_state_argocd_shows() -> None:
    covered = {Path(c["inputPath"]).stem for c in CASES}
    assert {"healthy", "progressing", "degraded-secret-missing", "stale-generation", "deleting"} <= covered
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded"}


def resource_with(observed: reconcile.Observed, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "yolo", "namespace": "labeling", "generation": generation},
            "status": reconcile.status(observed, previous=None)}


@pytest.mark.parametrize(("observed", "expected"), [
    (reconcile.Observed(1, available=True, url="http://10.0.0.1:9090",
                        projects=[reconcile.ProjectStatus(1, "p", 5, "Connected", compatible=True)]), "Healthy"),
    (reconcile.Observed(1), "Progressing"),  # pods still starting
    (reconcile.Observed(1, available=True, url="http://10.0.0.1:9090", label_studio_error=("LabelStudioUnreachable", "down")), "Degraded"),
    (reconcile.Observed(1, available=True, url="http://10.0.0.1:9090", label_studio_error=("Unauthorized", "bad key")), "Degraded"),
    (reconcile.Observed(1, kube_error=("SecretMissing", "no Secret")), "Degraded"),
    (reconcile.Observed(1, kube_error=("Forbidden", "may not apply services")), "Degraded"),
    (reconcile.Observed(1, spec_error="bad spec"), "Degraded"),
    (reconcile.Observed(1, available=True, url="http://10.0.0.1:9090",
                        projects=[reconcile.ProjectStatus(2, "t", state="Error", message="found Labels", compatible=False)]), "Degraded"),
])
def test_statuses_the_operator_writes_are_judged(observed: reconcile.Observed, expected: str) -> None:
    judged = health(MLBACKEND / "health.lua", resource_with(observed))
    assert judged["status"] == expected, judged
    ready = reconcile.ready(reconcile.conditions(observed))
    assert ready.reason in judged["message"] or expected == "Healthy"


def test_a_new_generation_is_progressing_until_the_operator_reports_it() -> None:
    observed = reconcile.Observed(1, available=True, url="http://10.0.0.1:9090",
                                  projects=[reconcile.ProjectStatus(1, "p", 5, "Connected", compatible=True)])
    stale = resource_with(observed, generation=2)
    assert health(MLBACKEND / "health.lua", stale) == {"status": "Progressing", "message": "Waiting for the operator to apply generation 2"}


def test_application_health_follows_its_status() -> None:
    script = CUSTOMIZATIONS / "argoproj.io" / "Application" / "health.lua"
    assert health(script, {"metadata": {"name": "a"}, "status": {"health": {"status": "Degraded", "message": "x"}}}) == \
        {"status": "Degraded", "message": "x"}
    assert health(script, {"metadata": {"name": "a"}}) == {"status": "Progressing", "message": ""}


def test_the_argocd_cm_patch_carries_the_same_scripts() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())["data"]
    assert data["resource.customizations.health.prelabel.dev_MLBackend"] == (MLBACKEND / "health.lua").read_text()
    assert data["resource.customizations.health.argoproj.io_Application"] == \
        (CUSTOMIZATIONS / "argoproj.io" / "Application" / "health.lua").read_text()


def test_sync_waves_put_the_operator_before_the_mlbackends() -> None:
    apps = {d["metadata"]["name"]: d for d in (yaml.safe_load(p.read_text()) for p in (ARGOCD / "apps").glob("*.yaml"))}
    wave = {name: int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for name, app in apps.items()}
    assert wave["prelabel-operator"] < wave["prelabel-mlbackends"]
    assert apps["prelabel-operator"]["spec"]["source"]["path"] == "charts/prelabel-operator"
    for app in apps.values():
        assert "resources-finalizer.argocd.argoproj.io" in app["metadata"]["finalizers"]  # deletes cascade, MLBackends first
        assert (ARGOCD.parents[1] / app["spec"]["source"]["path"]).is_dir(), app["spec"]["source"]["path"]
    mlbackends = [yaml.safe_load(p.read_text()) for p in (ARGOCD / "mlbackends").glob("*.yaml")]
    assert mlbackends and all(m["kind"] == "MLBackend" for m in mlbackends)  # no Secret in Git


@pytest.mark.parametrize("phase", ["Progressing", "Failed", "Complete"])
def test_prelabeling_never_changes_the_health_only_the_message(phase: str) -> None:
    """A long run must not hold later sync waves back (they wait for Healthy); its progress shows in the message."""
    from prelabel_operator import prelabel

    progress = prelabel.Progress(model_version="prelabel-0123456789ab", total=200, counted=True,
                                 predicted={"Progressing": 180, "Failed": 199, "Complete": 200}[phase], failed=int(phase == "Failed"))
    observed = reconcile.Observed(1, available=True, url="http://10.0.0.1:9090",
                                  projects=[reconcile.ProjectStatus(1, "p", 5, "Connected", compatible=True)])
    observed.prelabel = prelabel.condition(prelabel.status(progress, 0.0), paused=False)
    resource = resource_with(observed)
    resource["status"]["prelabel"] = prelabel.status(progress, 0.0)
    judged = health(MLBACKEND / "health.lua", resource)
    assert judged["status"] == "Healthy" and judged["message"].endswith(f"pre-labeling {phase} {progress.predicted}/200"), judged
