"""The training loop's use case (training_loop.TrainingLoop) over fake clients: when a run starts and
on what, what its Job and snapshot look like, how the gate's verdict on what the Job reported
becomes status, Events and a promotion, and what the on-demand triggers do. No cluster, no Label
Studio: milliseconds each."""

from __future__ import annotations

import copy
import json
from typing import Any

import kopf
import pytest

from prelabel_operator import drift, manifests
from prelabel_operator.errors import LabelStudioError
from prelabel_operator.memory import Memory
from prelabel_operator.reconciler import Resource
from prelabel_operator.spec import MLBackendSpec
from prelabel_operator.status import trained
from prelabel_operator.training_loop import Step, TrainingLoop, merge_patch
from tests.unit.operator.fakes import FakeBackend, FakeKube, FakeLabelStudio, b64

UID = "7c1a-uid"
BOX = {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
       "value": {"x": 10.0, "y": 20.0, "width": 30.0, "height": 30.0, "rotation": 0, "rectanglelabels": ["circle"]}}
STORE = {"s3": {"url": "s3://models/shapes", "endpoint": "http://seaweed:8333", "credentialsSecretRef": {"name": "s3"}}}
SPEC = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 1}]},
        "model": {"store": STORE}, "training": {"afterAnnotations": 10, "minTrainTasks": 2, "minValidationTasks": 1}}


def task(task_id: int, *, copied: bool = False, updated: str = "2026-12-01T10:00:00Z") -> dict[str, Any]:
    """A task annotated by a person (a box moved from the prediction), or a copy of its prediction unchanged."""
    predicted = {**BOX, "value": {**BOX["value"], "x": 11.0}}
    region = dict(predicted if copied else {**BOX, "origin": "prediction-changed"})
    return {"id": task_id, "predictions": [{"id": 1000 + task_id, "model_version": "v1", "result": [predicted]}],
            "annotations": [{"id": 5000 + task_id, "task": task_id, "result": [region], "updated_at": updated, "was_cancelled": False,
                             "ground_truth": False, "parent_prediction": 1000 + task_id}]}


def job_said(kube: FakeKube, run: str, message: dict[str, Any] | str, *, failed: bool = False) -> None:
    """The Job ended (Complete or Failed) and its pod wrote `message` as its termination message."""
    kind = "Failed" if failed else "Complete"
    kube.objects[("Job", run)]["status"] = {"conditions": [{"type": kind, "status": "True", "message": "BackoffLimitExceeded" if failed else ""}]}
    text = message if isinstance(message, str) else json.dumps(message)
    kube.pod_list.append({"metadata": {"name": f"{run}-x", "labels": {"job-name": run}},
                          "status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 1 if failed else 0, "message": text,
                                                                                     "finishedAt": "2026-12-01T11:00:00Z"}}}]}})


def report(candidate: float, current: float, name: str = "20261201T110000.000Z-0123abcd") -> dict[str, Any]:
    def m(v: float) -> dict[str, Any]:
        return {"map50_95": v, "map50": v + 0.2, "recall": {"circle": v + 0.1}, "images": 4}
    return {"run": "x", "candidate": name, "parent": "shapes-detect.pt", "task": "detect", "samples": {"train": 8, "validation": 4},
            "snapshot": "sha256:abc", "metrics": {"candidate": m(candidate), "current": m(current)}, "seconds": 30.0, "epochs": 15}


class World:
    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self.kube = FakeKube(secrets={("team", "ls-key"): {"api-key": b64("token-1")},
                                      ("team", "s3"): {"AWS_ACCESS_KEY_ID": b64("AKID"), "AWS_SECRET_ACCESS_KEY": b64("s3-secret")}})
        self.ls, self.backend = FakeLabelStudio(), FakeBackend()
        self.memory = Memory(drift.Schedule(rate=0.8, interval=30))
        self.clock, self.wall = 100.0, 1_764_000_000.0
        self.loop = TrainingLoop(self.kube, self.ls.client, self.backend, self.memory, adopt=lambda obj, owner: kopf.adopt(obj, owner=owner),
                                 clock=lambda: self.clock, wall=lambda: self.wall)
        self.spec = copy.deepcopy(spec or SPEC)
        self.status: dict[str, Any] = {}
        self.annotations: dict[str, str] = {}

    def step(self, advance: float = 60.0) -> Step:
        self.clock += advance
        self.wall += advance
        meta = {"name": "shapes", "namespace": "team", "uid": UID, "annotations": self.annotations}
        body = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": meta, "spec": self.spec}
        resource = Resource("shapes", "team", UID, 1, self.spec, copy.deepcopy(self.status), body)
        step = self.loop.step(resource)
        if step.training is not None:  # as the handler patches it, and the apiserver applies the patch
            self.status["training"] = apply_merge_patch(dict(self.status.get("training") or {}), merge_patch(self.training, step.training))
        return step

    @property
    def training(self) -> dict[str, Any]:
        return dict(self.status.get("training") or {})

    def jobs(self) -> list[dict[str, Any]]:
        return [o for o in self.kube.applied if o["kind"] == "Job"]

    def job_env(self, index: int = -1) -> dict[str, Any]:
        """The train container's env of the `index`th Job applied: name -> value."""
        return {e["name"]: e.get("value") for e in self.jobs()[index]["spec"]["template"]["spec"]["containers"][0]["env"]}

    def snapshot(self) -> dict[str, Any]:
        """The data snapshot of the first run's ConfigMap."""
        return dict(json.loads(next(o for o in self.kube.applied if o["kind"] == "ConfigMap")["data"]["snapshot.json"]))


def started(world: World, n: int = 30) -> str:
    world.ls.tasks[1] = [task(i) for i in range(1, n + 1)]
    step = world.step()
    assert [e.reason for e in step.events] == ["TrainingStarted"], world.training
    return str(world.training["job"])


def test_copies_of_predictions_do_not_count_and_fewer_than_the_threshold_start_nothing() -> None:
    world = World()
    world.ls.tasks[1] = [task(i) for i in range(1, 10)] + [task(i, copied=True) for i in range(10, 30)]
    step = world.step()
    assert world.jobs() == [] and step.events == []
    assert world.training["humanAnnotations"] == 9 and world.training["newAnnotations"] == 9
    assert world.training["message"] == "9 of 10 new human annotations since the last run"
    # What people kept of version v1's pre-labels: every submitted annotation, the copies included (a person kept them).
    assert world.training["agreement"] == [{"modelVersion": "v1", "tasks": 29, "precision": 1.0, "recall": 1.0}]
    assert trained(world.training).status == "False" and trained(world.training).reason == "WaitingForAnnotations"  # type: ignore[union-attr]


def test_the_threshold_starts_one_owned_job_on_a_deterministic_split_with_the_key_from_its_secret() -> None:
    world = World()
    run = started(world)
    assert run == "shapes-train-1" and world.training["phase"] == "Training"
    config_map, job = (next(o for o in world.kube.applied if o["kind"] == kind) for kind in ("ConfigMap", "Job"))
    for obj in (config_map, job):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID
    snapshot = json.loads(config_map["data"]["snapshot.json"])
    pairs = sorted(map(tuple, snapshot["train"] + snapshot["validation"]))
    assert pairs == [(i, 5000 + i) for i in range(1, 31)] and snapshot["validation"] and snapshot["project"] == 1
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LABEL_STUDIO_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ls-key", "key": "api-key"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert "token-1" not in json.dumps(job) and "s3-secret" not in json.dumps(job) and "token-1" not in json.dumps(world.status)
    assert env["TRAIN_PARENT"]["value"] == "" and env["MODEL_STORE"]["value"] == "s3://models/shapes"
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    # The same annotations split the same way, whatever their order.
    again = World()
    again.ls.tasks[1] = list(reversed([task(i) for i in range(1, 31)]))
    again.step()
    assert next(o for o in again.kube.applied if o["kind"] == "ConfigMap")["data"] == config_map["data"]


def test_the_job_gets_the_models_env_but_keeps_its_own_contract_and_names_its_run_by_the_resources_uid() -> None:
    """spec.model.env (media hosts, a task's model file) reaches the Job as it reaches the backend; names
    the Job sets stay its own. The store knows the run by Job name and uid: a resource made again under
    the same name starts a run that is not the old one's."""
    spec = copy.deepcopy(SPEC)
    spec["model"]["env"] = [{"name": "MEDIA_ALLOWED_HOSTS", "value": "media.example.com"}, {"name": "MODEL_DETECT", "value": "mine.pt"},
                            {"name": "TRAIN_EPOCHS", "value": "999"}, {"name": "MODEL_STORE", "value": "s3://elsewhere"}]
    world = World(spec)
    run = started(world)
    env = world.job_env(0)
    assert env["MEDIA_ALLOWED_HOSTS"] == "media.example.com" and env["MODEL_DETECT"] == "mine.pt"
    assert env["TRAIN_EPOCHS"] == "15" and env["MODEL_STORE"] == "s3://models/shapes"
    snapshot = world.snapshot()
    assert run == "shapes-train-1" and snapshot["run"] == f"shapes-train-1-{UID[:8]}"
    again = World(spec)
    again.ls.tasks[1] = world.ls.tasks[1]
    again.loop.step(Resource("shapes", "team", "0b9e-other-uid", 1, spec, {}, {"metadata": {"name": "shapes", "namespace": "team", "uid": "0b9e-other-uid"}}))
    other = again.snapshot()
    assert other["run"] == "shapes-train-1-0b9e-oth" and other["train"] == snapshot["train"]


def test_versions_promoted_before_stay_out_of_pruning_however_many_candidates_were_refused() -> None:
    """keepLast counts every stored candidate, refused ones too: the versions history says were promoted
    (the rollback targets) are passed as pinned, so refused runs cannot prune them."""
    world = World()
    names = iter(f"20261201T1{i}0000.000Z-0123abc{i}" for i in range(10))
    promoted = []
    for n, (candidate, current) in enumerate([(0.7, 0.5), (0.4, 0.7), (0.8, 0.7), (0.5, 0.8), (0.5, 0.8)]):
        world.ls.tasks[1] = [task(i, updated=f"2026-12-0{n + 2}T10:00:00Z") for i in range(1, 31)]
        world.step()
        name = next(names)
        job_said(world.kube, str(world.training["job"]), report(candidate=candidate, current=current, name=name))
        if world.step().promoted:
            promoted.append(name)
    world.ls.tasks[1] = [task(i, updated="2026-12-09T10:00:00Z") for i in range(1, 31)]
    world.step()
    env = world.job_env()
    assert len(promoted) == 2 and set(env["TRAIN_PINNED"].split(",")) == set(promoted)


def test_the_job_takes_the_pod_templates_identity_and_pull_secrets_not_the_rest() -> None:
    """An S3 store without keys uses the pods' service account (IRSA, Workload Identity), and an image
    in a private registry needs its pull secret: the Job's pod gets both from spec.podTemplate, but not
    what the template says of the backend's containers or volumes."""
    spec = copy.deepcopy(SPEC)
    spec["podTemplate"] = {"spec": {"serviceAccountName": "s3-reader", "imagePullSecrets": [{"name": "regcred"}],
                                    "containers": [{"name": "backend", "image": "other"}], "volumes": [{"name": "x", "emptyDir": {}}]}}
    world = World(spec)
    started(world)
    pod = world.jobs()[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "s3-reader" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert [c["name"] for c in pod["containers"]] == ["train"] and "x" not in [v["name"] for v in pod["volumes"]]
    assert pod["automountServiceAccountToken"] is False
    plain = World()
    started(plain)
    assert not {"serviceAccountName", "imagePullSecrets"} & set(plain.jobs()[0]["spec"]["template"]["spec"])


def test_a_newer_annotation_that_loses_to_its_tasks_ground_truth_is_not_counted_again_after_the_run() -> None:
    """Each task trains on its ground truth; a person's later annotation of it is seen by the run all
    the same, so it is not new at the next check (it would start the same run again and again)."""
    world = World()
    tasks = [task(i) for i in range(1, 31)]
    for t in tasks:
        t["annotations"][0]["ground_truth"] = True
        t["annotations"].append({**t["annotations"][0], "id": 9000 + t["id"], "ground_truth": False, "updated_at": "2026-12-01T12:00:00Z"})
    world.ls.tasks[1] = tasks
    world.step()
    run = str(world.training["job"])
    snapshot = world.snapshot()
    assert {a for _, a in snapshot["train"] + snapshot["validation"]} == {5000 + i for i in range(1, 31)}
    job_said(world.kube, run, report(candidate=0.505, current=0.50))
    world.step()
    world.step(advance=3600)
    assert world.training["newAnnotations"] == 0 and len(world.jobs()) == 1, world.training["message"]


def test_a_running_job_is_followed_without_a_second_one() -> None:
    world = World()
    started(world)
    for _ in range(3):
        assert world.step().training is None
    assert len(world.jobs()) == 1 and world.ls.calls.count("annotated_tasks") == 1


def test_a_better_candidate_is_promoted_and_rolls_the_backend() -> None:
    world = World()
    run = started(world)
    job_said(world.kube, run, report(candidate=0.70, current=0.50))
    step = world.step()
    assert step.promoted and [e.reason for e in step.events] == ["ModelPromoted"]
    t = world.training
    assert t["phase"] == "Promoted" and t["version"] == "20261201T110000.000Z-0123abcd" and "job" not in t
    assert t["lastRun"]["deltas"]["map50_95"] == pytest.approx(0.2) and t["history"][0]["outcome"] == "Promoted"
    assert ("ConfigMap", run, "team") in world.kube.deleted
    assert trained(t).status == "True" and trained(t).reason == "Promoted"  # type: ignore[union-attr]
    # The Deployment serves the promoted version, fetched from the store by an init container.
    spec = MLBackendSpec.parse(world.spec)
    deployment = manifests.deployment("shapes", spec, "d", manifests.serving_version(spec, t["version"]))
    pod = deployment["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["command"][-3:] == ["s3://models/shapes", t["version"], "/models"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MODEL_VERSION"] == t["version"] and env["MODEL_WEIGHTS"] == f"{t['version']}.pt"
    # The next run fine-tunes the promoted version and keeps it in the store.
    world.ls.tasks[1] = [task(i, updated="2026-12-02T10:00:00Z") for i in range(1, 31)]
    world.step()
    env = world.job_env()
    assert env["TRAIN_PARENT"] == t["version"] and env["TRAIN_PINNED"] == t["version"]
    # That run fails: its lastRun keeps nothing of the promoted run's (no deltas, metrics, candidate).
    job_said(world.kube, str(world.training["job"]), {"run": "x", "error": "OOMKilled"}, failed=True)
    world.step()
    last = world.training["lastRun"]
    assert last["outcome"] == "Failed" and not {"deltas", "metrics", "candidate", "parent"} & set(last), last
    assert world.training["version"] == t["version"]


def test_a_run_under_a_pin_keeps_the_promoted_version_in_the_store() -> None:
    """The pin serves and is fine-tuned; the promoted version it overrides is kept from pruning, so
    removing the pin rolls back to it."""
    world = World()
    job_said(world.kube, started(world), report(candidate=0.70, current=0.50))
    world.step()
    promoted, pin = world.training["version"], "20261101T000000.000Z-aaaaaaaa"
    world.spec["model"]["weights"] = {"version": pin}
    world.ls.tasks[1] = [task(i, updated="2026-12-02T10:00:00Z") for i in range(1, 31)]
    world.step()
    env = world.job_env()
    assert env["TRAIN_PARENT"] == pin and set(env["TRAIN_PINNED"].split(",")) == {pin, promoted}


def test_a_candidate_that_is_not_better_by_the_margin_is_refused_and_nothing_rolls() -> None:
    world = World()
    run = started(world)
    job_said(world.kube, run, report(candidate=0.505, current=0.50))
    step = world.step()
    assert not step.promoted and [(e.reason, e.warning) for e in step.events] == [("CandidateRefused", False)]
    assert world.training["phase"] == "Refused" and "version" not in world.training
    assert "mAP50-95 0.505 vs 0.500" in world.training["message"] and "needs +0.01" in world.training["message"]


def test_a_pinned_version_still_serves_after_a_promotion() -> None:
    spec = copy.deepcopy(SPEC)
    spec["model"]["weights"] = {"version": "20261101T000000.000Z-aaaaaaaa"}
    parsed = MLBackendSpec.parse(spec)
    assert manifests.serving_version(parsed, "20261201T110000.000Z-0123abcd") == "20261101T000000.000Z-aaaaaaaa"
    assert manifests.serving_version(MLBackendSpec.parse(SPEC), None) is None


@pytest.mark.parametrize(("message", "expected"), [
    ({"run": "x", "error": "no validation images could be fetched: 4 of 4 failed: 404"}, "no validation images could be fetched"),
    ("Traceback (most recent call last):\n  ...\nMemoryError", "MemoryError"),
])
def test_a_failed_job_says_why_in_status_and_a_warning(message: dict[str, Any] | str, expected: str) -> None:
    world = World()
    run = started(world)
    job_said(world.kube, run, message, failed=True)
    step = world.step()
    assert [(e.reason, e.warning) for e in step.events] == [("TrainingFailed", True)]
    assert world.training["phase"] == "Failed" and expected in world.training["message"] and "job" not in world.training


@pytest.mark.parametrize("on_demand_only", [None, 0])
def test_on_demand_triggers_start_one_run_each_and_clearing_one_starts_none(on_demand_only: int | None) -> None:
    world = World({**SPEC, "training": {**SPEC["training"], "afterAnnotations": on_demand_only}})
    world.ls.tasks[1] = [task(i) for i in range(1, 31)]
    world.step()
    assert world.jobs() == [] and world.training["message"] == "training runs on demand only"
    world.spec["training"]["trigger"] = "please"
    assert [e.reason for e in world.step(advance=1).events] == ["TrainingStarted"]  # at once, not a check period later
    job_said(world.kube, world.training["job"], report(0.5, 0.6))
    world.step()
    world.step()
    assert len(world.jobs()) == 1  # the same value is answered
    world.annotations["prelabel.dev/train"] = "2026-12-03"
    world.step()
    assert len(world.jobs()) == 2
    job_said(world.kube, world.training["job"], report(0.5, 0.6))
    world.step()
    world.spec["training"]["trigger"] = ""
    world.annotations.clear()
    world.step()
    assert len(world.jobs()) == 2


def test_label_studios_start_training_reported_by_a_backend_pod_starts_a_run() -> None:
    world = World({**SPEC, "training": {**SPEC["training"], "afterAnnotations": 1000}})
    world.ls.tasks[1] = [task(i) for i in range(1, 31)]
    container = {"ports": [{"name": "http", "containerPort": 9090}], "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}}}
    world.kube.pod_list.append({"metadata": {"name": "shapes-backend-1", "labels": manifests.selector("shapes")},
                                "status": {"phase": "Running", "podIP": "10.0.0.5"}, "spec": {"containers": [container]}})
    world.backend.health_answer = {"status": "UP", "training": {"requested_at": "2026-12-01T12:00:00Z", "requests": 1}}
    step = world.step()
    assert [e.reason for e in step.events] == ["TrainingStarted"] and "Start Training" in world.training["message"]
    assert ("http://10.0.0.5:9090/health", 0) in world.backend.asked


def test_on_demand_with_too_few_tasks_says_so_once_and_starts_nothing() -> None:
    world = World({**SPEC, "training": {**SPEC["training"], "trigger": "now", "minTrainTasks": 50}})
    world.ls.tasks[1] = [task(i) for i in range(1, 31)]
    step = world.step()
    assert world.jobs() == [] and [(e.reason, e.warning) for e in step.events] == [("TrainingNotStarted", True)]
    assert "training tasks, fewer than 50" in world.training["message"]
    assert world.step().events == []  # answered: not said again


def test_the_minimum_interval_holds_an_automatic_run_back() -> None:
    world = World({**SPEC, "training": {**SPEC["training"], "minIntervalSeconds": 3600}})
    run = started(world)
    job_said(world.kube, run, report(0.7, 0.5))
    world.step()
    world.ls.tasks[1] = [task(i, updated="2026-12-02T10:00:00Z") for i in range(1, 31)]
    world.step()
    assert len(world.jobs()) == 1 and "minimum interval" in world.training["message"]
    world.step(advance=3600)
    assert len(world.jobs()) == 2


def test_annotations_are_counted_every_check_period_only() -> None:
    world = World({**SPEC, "training": {**SPEC["training"], "checkSeconds": 30}})
    world.step(advance=1)
    world.step(advance=10)
    world.step(advance=10)
    assert world.ls.calls.count("annotated_tasks") == 1
    world.step(advance=15)
    assert world.ls.calls.count("annotated_tasks") == 2


def test_a_label_studio_outage_is_shown_and_checked_again() -> None:
    world = World()
    world.ls.fail = LabelStudioError("LabelStudioUnreachable", "Label Studio at http://ls:8080 cannot be reached", True)
    step = world.step()
    assert world.jobs() == [] and "LabelStudioUnreachable" in world.training["message"]
    assert world.step().training is None  # the same message is not written again
    world.ls.fail = None
    world.ls.tasks[1] = [task(i) for i in range(1, 31)]
    assert [e.reason for e in world.step().events] == ["TrainingStarted"] and step.events == []


def apply_merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386's apply, as the apiserver does it for a merge patch: null removes, objects merge, the rest replaces."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = apply_merge_patch(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(("old", "new"), [
    ({"job": "a", "phase": "Training", "runs": 1}, {"phase": "Promoted", "runs": 1}),
    # a failed run's lastRun replaces a promoted one's: its deltas and metrics must not stay behind
    ({"phase": "Promoted", "lastRun": {"run": "x-train-1", "outcome": "Promoted", "deltas": {"map50_95": 0.1}, "metrics": {"candidate": {"map50": 0.5}}}},
     {"phase": "Failed", "lastRun": {"run": "x-train-2", "outcome": "Failed", "message": "run x-train-2 failed: OOMKilled"}}),
    ({"lastRun": {"metrics": {"candidate": {"map50": 0.5, "recall": {"a": 1.0}}, "current": {"map50": 0.4}}}},
     {"lastRun": {"metrics": {"candidate": {"map50": 0.6}}}, "history": [{"run": "x-train-1"}]}),
    ({"history": [{"run": "a"}, {"run": "b"}]}, {"history": [{"run": "c"}]}),
    ({"a": 1}, {"a": 1}),
])
def test_merge_patch_applied_to_the_old_status_gives_the_new_one(old: dict[str, Any], new: dict[str, Any]) -> None:
    patch = merge_patch(old, new)
    assert apply_merge_patch(old, patch) == new
    assert (patch == {}) == (old == new)


def test_a_job_made_by_a_step_whose_status_was_lost_is_followed_not_made_again() -> None:
    world = World()
    run = started(world)
    world.status = {}  # the status patch never landed (the operator died after creating the Job)
    world.memory.training_checked.clear()
    step = world.step()
    assert world.training["job"] == run and len(world.jobs()) == 1 and [e.reason for e in step.events] == ["TrainingStarted"]
