"""The chaos scenario, shared by tests/integration/test_chaos.py (small N) and bench/chaos_bench.py
(full N): N MLBackends, each registered in a project of its own, go through four phases (create,
spec update, key rotation, deletion) while the operator is SIGKILLed at random moments and started
again (as a crashed pod restarts). After each phase everything must converge, counted from Label
Studio's own answers (its ML-backend and webhook APIs, per project) and the API server's:

- create, update, rotate: every MLBackend Ready for its generation, and in every project exactly one
  registration (the resource's address and title) and exactly one webhook (at that address);
  after a rotation every Deployment carries the new key's digest;
- delete: no MLBackend left (no finalizer stuck), no registration, no webhook, no Deployment, no
  Service.

The kills' moments and the operator's restart delays come from one seeded random generator: a
failure replays with the same seed (printed).
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prelabel_local.cluster import LocalCluster
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator import manifests
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG

PHASES = ("create", "update", "rotate", "delete")
SECRET, KEY = "ls-key", "api-key"


@dataclass
class Kill:
    phase: str
    at: float  # seconds since the phase began
    restart_after: float  # seconds the operator stayed down


@dataclass
class Outcome:
    seed: int
    backends: int
    kills: list[Kill] = field(default_factory=list)
    converged_after: dict[str, float] = field(default_factory=dict)  # phase -> seconds from its last kill to convergence
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> what was counted at convergence
    problems: dict[str, list[str]] = field(default_factory=dict)  # phase -> what still differed at the deadline

    @property
    def after_last_kill(self) -> float:
        """Seconds from the run's last kill to the convergence of the phase it fell in."""
        last = self.kills[-1].phase if self.kills else PHASES[-1]
        return self.converged_after.get(last, float("nan"))


class Chaos:
    """Runs the scenario in `namespace` (created here) against a running cluster, Label Studio and
    the fake backends (prelabel_local.fake_backends). `keys`: two valid Label Studio API keys
    (the rotation swaps the Secret from the first to the second)."""

    def __init__(self, cluster: LocalCluster, operator_kubeconfig: Path, ls_url: str, ls_client: Any, keys: tuple[str, str],
                 workdir: Path, namespace: str, backends: int, kills: int, seed: int, window: float, timeout: float,
                 resync_seconds: float = 5, log: Callable[[str], None] = print) -> None:
        self.cluster, self.kubeconfig, self.ls_url, self.ls = cluster, operator_kubeconfig, ls_url, ls_client
        self.keys, self.workdir, self.ns = keys, workdir, namespace
        self.n, self.kill_count, self.window, self.timeout = backends, kills, window, timeout
        self.resync_seconds, self.log = resync_seconds, log
        self.rng = random.Random(seed)
        self.outcome = Outcome(seed, backends)
        self.projects: dict[str, int] = {}  # MLBackend name -> its project
        self.operator: OperatorProcess | None = None
        self.starts = 0

    # -- the operator, killed and restarted -----------------------------------------------------------
    def _start_operator(self) -> None:
        self.starts += 1
        self.operator = OperatorProcess(self.kubeconfig, self.workdir / "operator.log", resync_seconds=self.resync_seconds).start()

    def _kill_operator(self) -> None:
        assert self.operator is not None
        self.operator.kill()

    def stop(self) -> None:
        if self.operator:
            self.operator.stop()

    # -- the scenario ---------------------------------------------------------------------------------
    def run(self) -> Outcome:
        self.log(f"chaos: seed {self.outcome.seed}, {self.n} MLBackends, {self.kill_count} SIGKILLs (replay with this seed)")
        self.cluster.kubectl("create", "namespace", self.ns)
        self.apply_secret(self.keys[0])
        for i in range(self.n):
            name = f"chaos-{i:03d}"
            self.projects[name] = self.ls.projects.create(title=f"chaos {self.ns} {name}", label_config=SEED_CONFIG).id
        per_phase = [self.kill_count // len(PHASES) + (1 if i < self.kill_count % len(PHASES) else 0) for i in range(len(PHASES))]
        self._start_operator()
        actions: dict[str, Callable[[], None]] = {
            "create": lambda: self.apply_backends(title="prelabel", threshold=0.5),
            "update": lambda: self.apply_backends(title="prelabel-v2", threshold=0.4),
            "rotate": lambda: self.apply_secret(self.keys[1]),
            "delete": lambda: self.cluster.kubectl("delete", "mlbackends", "--all", "-n", self.ns, "--wait=false"),
        }
        checks: dict[str, Callable[[], tuple[list[str], dict[str, int]]]] = {
            "create": lambda: self.check_registered("prelabel", self.keys[0]),
            "update": lambda: self.check_registered("prelabel-v2", self.keys[0]),
            "rotate": lambda: self.check_registered("prelabel-v2", self.keys[1]),
            "delete": self.check_gone,
        }
        for phase, kills in zip(PHASES, per_phase, strict=True):
            self._phase(phase, kills, actions[phase], checks[phase])
            if self.outcome.problems.get(phase):
                break  # the next phase would start from an unknown state
        return self.outcome

    def _phase(self, phase: str, kills: int, action: Callable[[], None], check: Callable[[], tuple[list[str], dict[str, int]]]) -> None:
        moments = sorted(self.rng.uniform(0, self.window) for _ in range(kills))
        began = time.monotonic()
        action()
        last_kill = began
        for at in moments:
            time.sleep(max(0.0, began + at - time.monotonic()))
            down = self.rng.uniform(0.2, 2.0)
            self._kill_operator()
            last_kill = time.monotonic()
            self.outcome.kills.append(Kill(phase, round(last_kill - began, 2), round(down, 2)))
            time.sleep(down)
            self._start_operator()
        deadline = time.monotonic() + self.timeout
        while True:
            problems, counts = check()
            if not problems:
                self.outcome.converged_after[phase] = round(time.monotonic() - last_kill, 1)
                self.outcome.counts[phase] = counts
                self.log(f"chaos: {phase}: {kills} kills, converged {self.outcome.converged_after[phase]}s after the last: {counts}")
                return
            if time.monotonic() > deadline:
                self.outcome.problems[phase] = problems
                self.outcome.counts[phase] = counts
                self.log(f"chaos: {phase}: not converged after {self.timeout:.0f}s: {problems[:10]}")
                return
            time.sleep(2)

    # -- actions (also used on their own by test_chaos) -------------------------------------------------
    def apply_secret(self, key: str) -> None:
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET, "namespace": self.ns}, "stringData": {KEY: key}}
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))

    def apply_backends(self, title: str, threshold: float) -> None:
        docs = [{"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": name, "namespace": self.ns},
                 "spec": {"labelStudio": {"url": self.ls_url, "apiKeySecretRef": {"name": SECRET, "key": KEY},
                                          "projects": [{"id": project}], "title": title},
                          "model": {"scoreThreshold": threshold}, "image": "prelabel-backend:chaos"}}
                for name, project in self.projects.items()]
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    # -- what is there ------------------------------------------------------------------------------
    def _list(self, kind: str) -> list[dict[str, Any]]:
        out = self.cluster.kubectl("get", kind, "-n", self.ns, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def _label_studio(self) -> tuple[dict[int, list[Any]], dict[int, list[Any]]]:
        """project -> its registrations, project -> its webhooks (Label Studio's own answers)."""
        registrations = {p: list(self.ls.ml.list(project=p)) for p in self.projects.values()}
        webhooks = {p: list(self.ls.webhooks.list(project=str(p))) for p in self.projects.values()}
        return registrations, webhooks

    def check_registered(self, title: str, key: str) -> tuple[list[str], dict[str, int]]:
        problems: list[str] = []
        backends = {b["metadata"]["name"]: b for b in self._list("mlbackends")}
        deployments = {d["metadata"]["name"]: d for d in self._list("deployments")}
        digest = manifests.secrets_hash({SECRET: {KEY: base64.b64encode(key.encode()).decode()}})
        registrations, webhooks = self._label_studio()
        for name, project in self.projects.items():
            backend = backends.get(name)
            status = (backend or {}).get("status") or {}
            ready = condition(status, "Ready")
            if backend is None or ready.get("status") != "True" or status.get("observedGeneration") != backend["metadata"]["generation"]:
                problems.append(f"{name}: not Ready for its generation ({ready.get('reason')}: {ready.get('message')})")
                continue
            deployment = deployments.get(manifests.object_name(name))
            annotations = ((deployment or {}).get("spec", {}).get("template", {}).get("metadata") or {}).get("annotations") or {}
            if annotations.get(manifests.SECRETS_HASH_ANNOTATION) != digest:
                problems.append(f"{name}: its Deployment does not carry the current key's digest")
            found = [(r.url, r.title) for r in registrations[project]]
            if found != [(status.get("url"), title)]:
                problems.append(f"{name}: project {project} has registrations {found}, not one at {status.get('url')} titled {title!r}")
            hooks = [h.url for h in webhooks[project]]
            if hooks != [f"{status.get('url')}/webhook"]:
                problems.append(f"{name}: project {project} has webhooks {hooks}")
        counts = {
            "ready": sum(1 for b in backends.values() if condition(b.get("status"), "Ready").get("status") == "True"),
            "registrations": sum(map(len, registrations.values())),
            "duplicate_registrations": sum(max(0, len(r) - 1) for r in registrations.values()),
            "webhooks": sum(map(len, webhooks.values())),
            "deployments": len(deployments),
            "services": len(self._list("services")),
        }
        return problems, counts

    def check_gone(self) -> tuple[list[str], dict[str, int]]:
        backends, deployments, services = self._list("mlbackends"), self._list("deployments"), self._list("services")
        registrations, webhooks = self._label_studio()
        counts = {"mlbackends": len(backends), "registrations": sum(map(len, registrations.values())),
                  "webhooks": sum(map(len, webhooks.values())), "deployments": len(deployments), "services": len(services)}
        problems = [f"{what}: {count} left" for what, count in counts.items() if count]
        problems += [f"{b['metadata']['name']}: finalizers {b['metadata'].get('finalizers')}" for b in backends]
        return problems, counts

