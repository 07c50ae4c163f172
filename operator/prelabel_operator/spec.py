"""The MLBackend spec as typed data. The CRD's schema defaults and validates; these defaults repeat
the schema's so a spec read from anywhere (a test, an old object) means the same thing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from . import __version__

AddressMode = Literal["ClusterIP", "ServiceDNS", "URL"]


class SpecError(ValueError):
    """The spec cannot be acted on; the message names the field to fix."""


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class ProjectRef:
    id: int | None = None
    title: str | None = None

    def describe(self) -> str:
        return f"project {self.id}" if self.id is not None else f"project titled {self.title!r}"


@dataclass(frozen=True)
class LabelStudioSpec:
    url: str
    api_key: SecretKeyRef
    projects: tuple[ProjectRef, ...]
    title: str = "prelabel"
    interactive: bool = False
    timeout_seconds: int = 100
    address_mode: AddressMode = "ClusterIP"
    address_url: str | None = None
    public_urls: tuple[str, ...] = ()  # Label Studio's other addresses in task data (its LABEL_STUDIO_HOST)


@dataclass(frozen=True)
class Weights:
    """At most one source; none serves the image's own models."""

    file: str | None = None  # under MODEL_ROOT in the image
    pvc_claim: str | None = None  # with `file` inside the volume
    url: str | None = None  # with `sha256`, fetched by an init container
    sha256: str | None = None

    @property
    def file_name(self) -> str | None:
        if self.url:
            return self.url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        return self.file


@dataclass(frozen=True)
class BasicAuthRef:
    name: str
    username_key: str = "username"
    password_key: str = "password"


@dataclass(frozen=True)
class Autoscaling:
    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = 3
    target_cpu: int = 70


@dataclass(frozen=True)
class PrelabelSpec:
    """spec.prelabel: which tasks must hold a prediction of the current model version, and the load
    the operator may put on the backend and Label Studio while getting there."""

    paused: bool = False
    tasks: Literal["All", "Unannotated"] = "All"
    on_new_model_version: Literal["Repredict", "KeepExisting"] = "Repredict"
    batch_size: int = 16  # tasks per /predict request
    concurrency: int = 2  # /predict requests in flight at once
    poll_seconds: int = 15  # how often, once complete, to look for new tasks
    max_attempts: int = 3  # tries per task before it counts as failed

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> PrelabelSpec | None:
        """None when the section is absent (pre-labeling off)."""
        if raw is None:
            return None
        return cls(
            paused=bool(raw.get("paused", False)),
            tasks=raw.get("tasks", "All"),
            on_new_model_version=raw.get("onNewModelVersion", "Repredict"),
            batch_size=int(raw.get("batchSize", 16)),
            concurrency=int(raw.get("concurrency", 2)),
            poll_seconds=int(raw.get("pollSeconds", 15)),
            max_attempts=int(raw.get("maxAttempts", 3)),
        )


def _weights(raw: dict[str, Any]) -> Weights:
    sources = [k for k in ("file", "pvc", "url") if raw.get(k)]
    if len(sources) > 1:
        raise SpecError("set at most one of spec.model.weights.file, .pvc and .url")
    if raw.get("pvc"):
        return Weights(file=raw["pvc"]["file"], pvc_claim=raw["pvc"]["claimName"])
    if raw.get("url"):
        return Weights(url=raw["url"]["href"], sha256=raw["url"]["sha256"])
    return Weights(file=raw.get("file"))


@dataclass(frozen=True)
class MLBackendSpec:
    label_studio: LabelStudioSpec
    image: str = f"ghcr.io/prelabel/prelabel-backend:{__version__}"
    image_pull_policy: str = "IfNotPresent"
    replicas: int = 1
    score_threshold: float = 0.5
    device: str = "cpu"
    weights: Weights = field(default_factory=Weights)
    env: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    affinity: dict[str, Any] = field(default_factory=dict)
    service_type: str = "ClusterIP"
    service_port: int = 9090
    basic_auth: BasicAuthRef | None = None
    autoscaling: Autoscaling = field(default_factory=Autoscaling)
    pod_template: dict[str, Any] = field(default_factory=dict)
    deletion_policy: Literal["Deregister", "Orphan"] = "Deregister"
    prelabel: PrelabelSpec | None = None

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> MLBackendSpec:
        ls = spec.get("labelStudio") or {}
        if not ls.get("url"):
            raise SpecError("spec.labelStudio.url is required")
        key = ls.get("apiKeySecretRef") or {}
        if not key.get("name"):
            raise SpecError("spec.labelStudio.apiKeySecretRef.name is required")
        projects = []
        for i, p in enumerate(ls.get("projects") or []):
            if ("id" in p) == ("title" in p):
                raise SpecError(f"spec.labelStudio.projects[{i}] needs exactly one of id or title")
            projects.append(ProjectRef(id=p.get("id"), title=p.get("title")))
        if not projects:
            raise SpecError("spec.labelStudio.projects needs at least one project")
        address = ls.get("address") or {}
        model = spec.get("model") or {}
        service = spec.get("service") or {}
        auth = spec.get("basicAuthSecretRef")
        scaling = spec.get("autoscaling") or {}
        return cls(
            label_studio=LabelStudioSpec(
                url=str(ls["url"]).rstrip("/"),
                api_key=SecretKeyRef(key["name"], key.get("key", "api-key")),
                projects=tuple(projects),
                title=ls.get("title", "prelabel"),
                interactive=bool(ls.get("interactive", False)),
                timeout_seconds=int(ls.get("timeoutSeconds", 100)),
                address_mode=address.get("mode", "ClusterIP"),
                address_url=address.get("url"),
                public_urls=tuple(str(u).rstrip("/") for u in ls.get("publicUrls") or ()),
            ),
            image=spec.get("image", cls.image),
            image_pull_policy=spec.get("imagePullPolicy", cls.image_pull_policy),
            replicas=int(spec.get("replicas", 1)),
            score_threshold=float(model.get("scoreThreshold", 0.5)),
            weights=_weights(model.get("weights") or {}),
            device=model.get("device", "cpu"),
            env=tuple(model.get("env") or ()),
            resources=dict(spec.get("resources") or {}),
            node_selector=dict(spec.get("nodeSelector") or {}),
            tolerations=tuple(spec.get("tolerations") or ()),
            affinity=dict(spec.get("affinity") or {}),
            service_type=service.get("type", "ClusterIP"),
            service_port=int(service.get("port", 9090)),
            basic_auth=BasicAuthRef(auth["name"], auth.get("usernameKey", "username"), auth.get("passwordKey", "password")) if auth else None,
            autoscaling=Autoscaling(
                enabled=bool(scaling.get("enabled", False)),
                min_replicas=int(scaling.get("minReplicas", 1)),
                max_replicas=int(scaling.get("maxReplicas", 3)),
                target_cpu=int(scaling.get("targetCPUUtilizationPercentage", 70)),
            ),
            pod_template=dict(spec.get("podTemplate") or {}),
            deletion_policy=spec.get("deletionPolicy", "Deregister"),
            prelabel=PrelabelSpec.parse(spec.get("prelabel")),
        )
