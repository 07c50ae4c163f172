"""GitOps for real: a real Argo CD (its repo server and application controller, local/build/
build-argocd.sh) syncs examples/argocd/ from a local Git repository onto the real control plane,
with a real Label Studio:

1. examples/argocd/ and the chart are committed into a `file://` repository, with repoURL
   rewritten to it (and the MLBackend pointed at this Label Studio and one of its projects);
2. the argocd-cm patch is applied exactly as docs/gitops.md says; 3. root.yaml is applied;
4. the waves sync in order (the namespace, then the operator, once it is Healthy the MLBackends)
   with no failed or retried sync attempt in any Application's operation state; the operator comes
   up (the chart's pod cannot run here: ChartOperator runs the operator for it, with its
   ServiceAccount's token, while its Deployment exists);
5. the MLBackend from Git becomes Ready and is registered in Label Studio;
6. Argo CD's health for it is what its status says, Healthy and Degraded (with the Lua's message);
7. a spec change committed to Git is synced and applied;
8. the apps removed from Git are pruned in reverse order: the MLBackend is deregistered and gone
   before the operator's Deployment goes, and one whose key's Secret never existed lets go at once
   (an Event says nothing was registered); the CRD stays.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from prelabel_local import argocd as argocd_dev
from prelabel_local.cluster import REPO
from prelabel_local.kubelet import BackendKubelet
from prelabel_local.operator_process import ChartOperator
from prelabel_local.poller import Poller
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG, wait_for
from tests.unit.test_argocd import APPLICATION, MLBACKEND, health

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]

PUBLIC_REPO = "https://github.com/prelabel/prelabel.git"
APPS = ("prelabel", "prelabel-operator", "prelabel-mlbackends")
MLBACKEND_PATH = Path("examples/argocd/mlbackends/mlbackend.yaml")


class Git:
    """A local repository Argo CD reads through a file:// URL, on branch main."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        self("init", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def __call__(self, *args: str) -> str:
        env = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@prelabel.local", "GIT_COMMITTER_NAME": "test",
               "GIT_COMMITTER_EMAIL": "test@prelabel.local", "HOME": str(self.path.parent), "PATH": "/usr/bin:/bin"}
        return subprocess.run(["git", *args], cwd=self.path, env=env, capture_output=True, text=True, check=True).stdout.strip()

    def commit(self, message: str) -> str:
        self("add", "-A")
        self("commit", "-q", "-m", message)
        return self("rev-parse", "HEAD")


def gitops_repository(path: Path, label_studio_url: str, project_title: str) -> Git:
    """examples/argocd/ and the chart as a user's repository holds them, repoURL pointing at it."""
    git = Git(path)
    for folder in ("examples/argocd", "charts/prelabel-operator"):
        shutil.copytree(REPO / folder, path / folder)
    for app in [path / "examples/argocd/root.yaml", *(path / "examples/argocd/apps").glob("*.yaml")]:
        text = app.read_text()
        if app.name != "namespace.yaml":
            assert text.count(PUBLIC_REPO) == 1, app
        app.write_text(text.replace(PUBLIC_REPO, git.url))
    mlbackend = yaml.safe_load((path / MLBACKEND_PATH).read_text())
    mlbackend["spec"]["labelStudio"]["url"] = label_studio_url
    mlbackend["spec"]["labelStudio"]["projects"] = [{"title": project_title}]
    (path / MLBACKEND_PATH).write_text(yaml.safe_dump(mlbackend, sort_keys=False))
    git.commit("Prelabel through Argo CD")
    return git


@dataclass
class Recorder(Poller):
    """Polls the Applications, the namespace and the MLBackend every half second from a thread:
    when each was first seen, first judged Healthy by the Application health check, began deleting,
    was gone; and every operation phase and retry count an Application showed on the way."""

    kubeconfig: Path
    first_seen: dict[str, float] = field(default_factory=dict)
    healthy: dict[str, float] = field(default_factory=dict)
    deleting: dict[str, float] = field(default_factory=dict)
    gone: dict[str, float] = field(default_factory=dict)
    operations: set[tuple[str, str, int]] = field(default_factory=set)  # (app, phase, retryCount)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)  # (time, what, its new state): printed at the end

    def __post_init__(self) -> None:
        Poller.__init__(self, 0.5, "argocd-recorder")
        api = config.new_client_from_config(str(self.kubeconfig))
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)

    def _change(self, key: str, state: str, now: float) -> None:
        if next((s for _, k, s in reversed(self.timeline) if k == key), None) != state:
            self.timeline.append((now, key, state))

    def _see(self, key: str, obj: dict[str, Any] | None, now: float) -> None:
        if obj is None:
            if key in self.first_seen:
                self.gone.setdefault(key, now)
            return
        self.first_seen.setdefault(key, now)
        if obj["metadata"].get("deletionTimestamp"):
            self.deleting.setdefault(key, now)

    def sync(self) -> None:
        now = time.time()
        apps = {a["metadata"]["name"]: a for a in self.custom.list_namespaced_custom_object(
            "argoproj.io", "v1alpha1", argocd_dev.NAMESPACE, "applications")["items"]}
        for name in APPS:
            app = apps.get(name)
            self._see(f"app/{name}", app, now)
            if app is None:
                continue
            op = (app.get("status") or {}).get("operationState")
            if op:
                self.operations.add((name, op.get("phase", ""), int(op.get("retryCount", 0))))
            judged = health(APPLICATION / "health.lua", app)
            self._change(f"app/{name}", f"{judged['status']}: {judged['message'][:120]}", now)
            if judged["status"] == "Healthy":
                self.healthy.setdefault(f"app/{name}", now)
        namespaces = {n.metadata.name for n in self.core.list_namespace().items}
        self._see("namespace/labeling", {"metadata": {}} if "labeling" in namespaces else None, now)
        try:
            items = self.custom.list_cluster_custom_object("prelabel.dev", "v1alpha1", "mlbackends")["items"]
        except client.ApiException as exc:
            if exc.status != 404:  # no CRD yet
                raise
            items = []
        mlbackend = next((m for m in items if m["metadata"]["name"] == "yolo"), None)
        self._see("mlbackend/yolo", mlbackend, now)
        if mlbackend:
            ready = condition(mlbackend.get("status") or {}, "Ready")
            self._change("mlbackend/yolo", f"{ready.get('reason')}: {str(ready.get('message'))[:120]}", now)


@pytest.fixture(scope="module")
def argocd(cluster, request: pytest.FixtureRequest) -> Iterator[argocd_dev.LocalArgoCD]:  # noqa: ANN001
    server = argocd_dev.LocalArgoCD(argocd_dev.build(quiet=True), cluster).start()
    yield server
    failed = getattr(request.session, "prelabel_failed", False)
    if failed:
        for name, tail in server.logs().items():
            print(f"--- {name} log tail:\n{tail}")
    server.stop(keep_logs=failed)


def mlbackend_health_in_argocd(app: dict[str, Any]) -> dict[str, str]:
    """The MLBackend's health as the controller recorded it in its Application."""
    for resource in (app.get("status") or {}).get("resources", []):
        if resource["kind"] == "MLBackend" and resource["name"] == "yolo":
            found = resource.get("health") or {}
            return {"status": found.get("status", ""), "message": found.get("message", "")}
    return {}


def test_argocd_syncs_the_examples_from_git(argocd, cluster, label_studio, ls_client, tmp_path: Path) -> None:  # noqa: ANN001
    started, started_at = time.monotonic(), time.time()
    timings: dict[str, float] = {}
    project = ls_client.projects.create(title=f"Street scenes {uuid.uuid4().hex[:6]}", label_config=SEED_CONFIG)
    git = gitops_repository(tmp_path / "gitops", label_studio.url, project.title)
    work = tmp_path / "processes"
    recorder = Recorder(cluster.kubeconfig).start()
    operator = ChartOperator(cluster, "prelabel-system", "prelabel-operator", work).start()
    kubelet = BackendKubelet(cluster.kubeconfig, work).start()
    try:
        # 2. The argocd-cm patch, exactly as docs/gitops.md says (from the repository's checkout).
        patch = git.path / "examples/argocd/argocd-cm-patch.yaml"
        cluster.kubectl("-n", "argocd", "patch", "configmap", "argocd-cm", "--patch-file", str(patch))
        # 3. root.yaml. The key's Secret is not in Git: made by hand once wave -1 has made its namespace.
        cluster.kubectl("-n", "argocd", "apply", "-f", str(git.path / "examples/argocd/root.yaml"))
        deadline = time.monotonic() + 120
        while cluster.kubectl("get", "namespace", "labeling", check=False).returncode != 0:
            assert time.monotonic() < deadline, "wave -1 made no namespace"
            time.sleep(0.2)
        cluster.kubectl("-n", "labeling", "create", "secret", "generic", "label-studio", f"--from-literal=api-key={label_studio.token}")

        # 4. Waves in order, no failed attempt; the operator came up.
        def all_synced() -> bool:
            failed = {(app, phase, retries) for app, phase, retries in recorder.operations if phase not in ("Running", "Succeeded") or retries}
            assert not failed, f"a sync attempt failed: {failed}"  # at once: a failed attempt is retried with a long backoff
            return all((s := argocd.application(name).get("status") or {}).get("sync", {}).get("status") == "Synced"
                       and s.get("health", {}).get("status") == "Healthy" and s.get("operationState", {}).get("phase") == "Succeeded"
                       for name in APPS)

        wait_for("every Application Synced and Healthy", all_synced, 300)
        timings["synced"] = time.monotonic() - started
        # Wave -1 before wave 0 (2 s apart: Argo CD's wave delay, so creation times in seconds tell);
        # wave 1 created only once wave 0 was Healthy by the Application health check.
        created = {name: argocd.application(name)["metadata"]["creationTimestamp"] for name in APPS}
        namespace = json.loads(cluster.kubectl("get", "namespace", "labeling", "-o", "json").stdout)
        assert namespace["metadata"]["creationTimestamp"] < created["prelabel-operator"], (namespace["metadata"], created)
        seen = recorder.first_seen
        assert recorder.healthy["app/prelabel-operator"] <= seen["app/prelabel-mlbackends"], (recorder.healthy, seen)
        operator_sync = argocd.application("prelabel-operator")["status"]["operationState"]
        assert operator_sync["finishedAt"] <= created["prelabel-mlbackends"], (operator_sync, created)
        assert operator.events and operator.events[0][1] == "started"  # the operator came up with its Deployment
        assert {phase for _, phase, _ in recorder.operations} <= {"Running", "Succeeded"}, recorder.operations
        assert all(retries == 0 for *_, retries in recorder.operations), recorder.operations
        for name in APPS:
            op = argocd.application(name)["status"]["operationState"]
            assert op["phase"] == "Succeeded" and not op.get("retryCount"), (name, op)
            assert op["syncResult"]["revision"] == git("rev-parse", "HEAD")
        events = json.loads(cluster.kubectl("get", "events", "-n", "argocd", "-o", "json").stdout)["items"]
        completed = [e["message"] for e in events if e.get("reason") == "OperationCompleted"]
        assert completed and not [m for m in completed if "failed" in m.lower()], completed
        root_resources = {(r["kind"], r["name"]): r for r in argocd.application("prelabel")["status"]["resources"]}
        assert root_resources[("Application", "prelabel-operator")]["health"]["status"] == "Healthy"  # judged by our Lua

        # 5. The MLBackend from Git: Ready, registered in Label Studio.
        status = wait_for("Ready", lambda: (s := cluster.status("mlb", "labeling", "yolo")) and condition(s, "Ready").get("status") == "True" and s, 180)
        assert [(m.url, m.state) for m in ls_client.ml.list(project=project.id)] == [(status["url"], "CO")]
        assert status["projectsSummary"] == "1/1"

        # 6. Argo CD's health is what the status says: Healthy, then Degraded with the Lua's message.
        def argo_and_lua() -> tuple[dict[str, str], dict[str, str]]:
            live = json.loads(cluster.kubectl("get", "mlb", "yolo", "-n", "labeling", "-o", "json").stdout)
            return mlbackend_health_in_argocd(argocd.application("prelabel-mlbackends")), health(MLBACKEND / "health.lua", live)

        argo, _ = wait_for("Argo CD's health Healthy", lambda: (pair := argo_and_lua())[0].get("status") == "Healthy" and pair[0] == pair[1] and pair, 60)
        assert argo["message"] == f"Registered at {status['url']} in 1/1 projects"
        cluster.kubectl("-n", "labeling", "delete", "secret", "label-studio")
        argo, _ = wait_for("Argo CD's health Degraded", lambda: (pair := argo_and_lua())[0].get("status") == "Degraded" and pair[0] == pair[1] and pair, 90)
        assert argo["message"].startswith("SecretMissing: Secret labeling/label-studio does not exist"), argo
        cluster.kubectl("-n", "labeling", "create", "secret", "generic", "label-studio", f"--from-literal=api-key={label_studio.token}")
        wait_for("Healthy again", lambda: (pair := argo_and_lua())[0].get("status") == "Healthy" and pair[0] == pair[1], 180)

        # 7. A spec change committed to Git is synced and applied.
        mlbackend = yaml.safe_load((git.path / MLBACKEND_PATH).read_text())
        mlbackend["spec"]["model"]["scoreThreshold"] = 0.4
        (git.path / MLBACKEND_PATH).write_text(yaml.safe_dump(mlbackend, sort_keys=False))
        # ... with a second MLBackend whose key's Secret never exists (issue 27): pruned later, it must
        # not hold the prune hostage.
        no_key = {**mlbackend, "metadata": {**mlbackend["metadata"], "name": "no-key"},
                  "spec": {**mlbackend["spec"], "labelStudio": {**mlbackend["spec"]["labelStudio"], "apiKeySecretRef": {"name": "missing-key"}}}}
        (git.path / MLBACKEND_PATH).with_name("no-key.yaml").write_text(yaml.safe_dump(no_key, sort_keys=False))
        revision = git.commit("yolo: score threshold 0.4; no-key, whose Secret is missing")
        changed = time.monotonic()

        def threshold() -> str:
            return cluster.kubectl("get", "deployment", "yolo-backend", "-n", "labeling", "-o",
                                   "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='MODEL_SCORE_THRESHOLD')].value}").stdout

        wait_for("the new threshold in the Deployment", lambda: threshold() == "0.4", 120)
        timings["commit to Deployment"] = time.monotonic() - changed
        app = wait_for("the commit synced", lambda: (a := argocd.application("prelabel-mlbackends"))["status"]["sync"].get("revision") == revision
                       and a["status"]["operationState"]["phase"] == "Succeeded" and a, 60)
        assert app["status"]["operationState"]["syncResult"]["revision"] == revision
        wait_for("generation 2 Ready", lambda: (s := cluster.status("mlb", "labeling", "yolo")).get("observedGeneration") == 2
                 and condition(s, "Ready").get("status") == "True", 120)
        wait_for("Healthy at generation 2", lambda: mlbackend_health_in_argocd(argocd.application("prelabel-mlbackends")).get("status") == "Healthy", 60)
        wait_for("no-key: SecretMissing", lambda: condition(cluster.status("mlb", "labeling", "no-key"), "Ready").get("reason") == "SecretMissing", 60)

        # 8. The apps removed from Git: pruned in reverse wave order, MLBackends deregistered first.
        (git.path / "examples/argocd/apps/mlbackends.yaml").unlink()
        (git.path / "examples/argocd/apps/operator.yaml").unlink()
        git.commit("Remove Prelabel")
        removed = time.monotonic()
        wait_for("both apps pruned", lambda: not argocd.application("prelabel-operator") and not argocd.application("prelabel-mlbackends"), 300)
        timings["prune"] = time.monotonic() - removed
        wait_for("the operator stopped with its Deployment", lambda: operator.events[-1][1] == "stopped", 30)
        stopped = operator.events[-1][0]
        operator_app_deleted = recorder.deleting.get("app/prelabel-operator", recorder.gone["app/prelabel-operator"])
        assert recorder.gone["app/prelabel-mlbackends"] <= operator_app_deleted, (recorder.gone, recorder.deleting)
        assert recorder.gone["mlbackend/yolo"] < stopped, (recorder.gone, operator.events)
        assert list(ls_client.ml.list(project=project.id)) == []
        assert cluster.kubectl("get", "mlb", "-n", "labeling", "-o", "name").stdout.strip() == ""  # no-key too: never held hostage
        skipped = json.loads(cluster.kubectl("get", "events", "-n", "labeling", "--field-selector", "reason=DeregistrationSkipped",
                                             "-o", "json").stdout)["items"]
        assert [e["involvedObject"]["name"] for e in skipped] == ["no-key"] and "nothing was registered" in skipped[0]["message"]
        assert not [h for h in ls_client.webhooks.list(project=str(project.id)) if h.url.startswith(status["url"])]
        assert cluster.kubectl("get", "deployment", "prelabel-operator", "-n", "prelabel-system", check=False).returncode != 0
        assert cluster.kubectl("get", "crd", "mlbackends.prelabel.dev", check=False).returncode == 0  # Argo CD never deletes CRDs
        assert cluster.kubectl("get", "namespace", "labeling", check=False).returncode == 0  # still in Git
        wait_for("the root Synced", lambda: argocd.application("prelabel")["status"]["sync"]["status"] == "Synced", 60)
        assert not recorder.errors and not operator.errors, (recorder.errors, operator.errors)
    finally:
        for name in APPS:
            s = argocd.application(name).get("status") or {}
            op = s.get("operationState") or {}
            print(f"{name}: sync={s.get('sync', {}).get('status')} health={s.get('health', {}).get('status')} "
                  f"operation={op.get('phase')} retries={op.get('retryCount', 0)}: {str(op.get('message'))[:500]}")
        print("operations seen:", sorted(recorder.operations))
        print("timeline:\n" + "\n".join(f"  {when - started_at:6.1f}s {what}: {state}" for when, what, state in recorder.timeline))
        recorder.stop()
        kubelet.stop()
        operator.stop()
        print("timings (s):", {k: round(v, 1) for k, v in timings.items()}, "operator events:", operator.events)
        if operator.log.exists():
            print("operator log tail:\n", operator.log.read_text()[-3000:])
