"""The MLBackend spec as typed data. The CRD's schema defaults and validates; these defaults repeat
the schema's so a spec read from anywhere (a test, an old object) means the same thing."""

from __future__ import annotations

import re
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
class ProjectSelector:
    """spec.labelStudio.projectSelector: every project the key's user sees whose title matches
    `title_pattern` (a Python regular expression, searched; None: every project), and with
    `compatible_only` only those whose labeling config the backend serves."""

    title_pattern: str | None = None
    compatible_only: bool = False

    def matches(self, title: str) -> bool:
        return self.title_pattern is None or re.search(self.title_pattern, title) is not None


@dataclass(frozen=True)
class LabelStudioSpec:
    url: str
    api_key: SecretKeyRef
    projects: tuple[ProjectRef, ...]  # empty with a selector
    title: str = "prelabel"
    interactive: bool = False
    timeout_seconds: int = 100
    address_mode: AddressMode = "ClusterIP"
    address_url: str | None = None
    public_urls: tuple[str, ...] = ()  # Label Studio's other addresses in task data (its LABEL_STUDIO_HOST)
    selector: ProjectSelector | None = None  # instead of `projects`


@dataclass(frozen=True)
class Weights:
    """At most one source; none serves the image's own models."""

    file: str | None = None  # under MODEL_ROOT in the image
    pvc_claim: str | None = None  # with `file` inside the volume
    url: str | None = None  # with `sha256`, fetched by an init container
    sha256: str | None = None
    version: str | None = None  # a version in spec.model.store, fetched by an init container (a pin: a rollback)

    @property
    def file_name(self) -> str | None:
        if self.version:
            return None  # the file the init container writes depends on the version, not the spec (manifests)
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
class Subset:
    """spec.prelabel.subset: Data Manager filter items (Label Studio's form, joined with "and"), or a
    saved tab (view: its title, or its id as an int), and/or a sample of N tasks."""

    filters: tuple[dict[str, Any], ...] = ()
    view: str | int | None = None
    sample: int | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> Subset:
        raw = raw or {}
        filters = raw.get("filters")
        if filters is not None and raw.get("view") is not None:
            raise SpecError("spec.prelabel.subset: set filters or view, not both (a view holds its own filters)")
        items: tuple[dict[str, Any], ...] = ()
        if filters is not None:
            items = tuple(dict(item) for item in filters.get("items") or [])
            if not items:
                raise SpecError("spec.prelabel.subset.filters.items: name at least one Data Manager filter")
            if filters.get("conjunction", "and") == "or" and len(items) > 1:
                raise SpecError("spec.prelabel.subset.filters: conjunction 'or' over several items cannot be combined with the "
                                "operator's own filters (Label Studio's filters are one flat list): use several MLBackends, or one item")
        view = raw.get("view")
        sample = raw.get("sample")
        return cls(filters=items, view=view if isinstance(view, int) or view is None else str(view),
                   sample=int(sample) if sample is not None else None)


@dataclass(frozen=True)
class ScaleToZero:
    """spec.prelabel.scaleToZero: the backend Deployment goes to zero replicas once pre-labeling is
    complete and no /predict was sent for idle_seconds; it comes back for new work (sleep.py)."""

    idle_seconds: int = 3600


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
    interactive: bool = False  # pre-label all tasks even with a backend registered as interactive (spec.labelStudio.interactive)
    subset: Subset = Subset()  # part of each project only (spec.prelabel.subset)
    keep_model_versions: int | None = None  # spec.prelabel.retention: the predictions of this many of its newest versions; None: all
    scale_to_zero: ScaleToZero | None = None  # None: the backend never sleeps

    @classmethod
    def parse(cls, raw: dict[str, Any] | None, foreign: bool = False) -> PrelabelSpec | None:
        """None when the section is absent (pre-labeling off). foreign (spec.backend): an unset
        onNewModelVersion is KeepExisting (a version that changes on every annotation, or per pod,
        must not re-predict the project each time), Repredict otherwise."""
        if raw is None:
            return None
        return cls(
            paused=bool(raw.get("paused", False)),
            tasks=raw.get("tasks", "All"),
            on_new_model_version=raw.get("onNewModelVersion", "KeepExisting" if foreign else "Repredict"),
            batch_size=int(raw.get("batchSize", 16)),
            concurrency=int(raw.get("concurrency", 2)),
            poll_seconds=int(raw.get("pollSeconds", 15)),
            max_attempts=int(raw.get("maxAttempts", 3)),
            interactive=bool(raw.get("interactive", False)),
            subset=Subset.parse(raw.get("subset")),
            keep_model_versions=_keep(raw.get("retention")),
            scale_to_zero=None if raw.get("scaleToZero") is None else ScaleToZero(int(raw["scaleToZero"].get("idleSeconds", 3600))),
        )


def _keep(raw: dict[str, Any] | None) -> int | None:
    keep = (raw or {}).get("keepModelVersions")
    return None if keep is None else int(keep)


def _selector(raw: dict[str, Any] | None) -> ProjectSelector | None:
    if raw is None:
        return None
    pattern = raw.get("titlePattern")
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SpecError(f"spec.labelStudio.projectSelector.titlePattern is not a regular expression: {exc}") from None
    return ProjectSelector(title_pattern=pattern, compatible_only=bool(raw.get("compatibleOnly", False)))


def _weights(raw: dict[str, Any]) -> Weights:
    sources = [k for k in ("file", "pvc", "url", "version") if raw.get(k)]
    if len(sources) > 1:
        raise SpecError("set at most one of spec.model.weights.file, .pvc, .url and .version")
    if raw.get("version"):
        return Weights(version=str(raw["version"]))
    if raw.get("pvc"):
        return Weights(file=raw["pvc"]["file"], pvc_claim=raw["pvc"]["claimName"])
    if raw.get("url"):
        return Weights(url=raw["url"]["href"], sha256=raw["url"]["sha256"])
    return Weights(file=raw.get("file"))


@dataclass(frozen=True)
class S3Credentials:
    """A Secret holding the S3 access key pair (AWS's own variable names by default)."""

    name: str
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"


@dataclass(frozen=True)
class ModelStore:
    """Where model versions live (prelabel_backend.model_versions): an S3 bucket and prefix, or a
    PersistentVolumeClaim mounted at /store. Training puts candidates there; serving fetches one."""

    s3_url: str | None = None  # s3://bucket/prefix
    s3_endpoint: str | None = None  # http(s)://host:port of an S3-compatible server; None: AWS
    s3_region: str | None = None
    s3_credentials: S3Credentials | None = None
    pvc_claim: str | None = None
    keep_last: int = 5  # versions kept by training's pruning (the serving and pinned ones always are)

    @property
    def url(self) -> str:
        """The store's URL as the backend's open_store reads it."""
        return self.s3_url or PVC_STORE_PATH

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> ModelStore | None:
        if not raw:
            return None
        s3, pvc = raw.get("s3") or {}, raw.get("pvc") or {}
        if bool(s3) == bool(pvc):
            raise SpecError("spec.model.store needs exactly one of s3 and pvc")
        creds = s3.get("credentialsSecretRef")
        return cls(
            s3_url=s3.get("url"), s3_endpoint=s3.get("endpoint"), s3_region=s3.get("region"),
            s3_credentials=S3Credentials(creds["name"], creds.get("accessKeyIdKey", "AWS_ACCESS_KEY_ID"),
                                         creds.get("secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY")) if creds else None,
            pvc_claim=pvc.get("claimName"), keep_last=int(raw.get("keepLast", 5)),
        )


PVC_STORE_PATH = "/store"


@dataclass(frozen=True)
class TrainingSpec:
    """spec.training: when to fine-tune the served model on the project's human annotations, how, and
    the gate a candidate must pass to replace it (prelabel_operator.training)."""

    after_annotations: int | None = 50  # new human annotations since the last run; None: on demand only
    min_interval_seconds: int = 0
    trigger: str = ""  # on demand: a new non-empty value starts a run
    project: int | None = None  # whose annotations; None: the first declared project
    control: str | None = None  # which control's model; None: the labeling config's first
    validation_fraction: float = 0.2
    epochs: int = 15
    image_size: int = 192
    batch: int = 16
    margin: float = 0.01  # mAP50-95 a candidate must gain
    max_recall_drop: float = 0.05  # per class
    min_train: int = 8  # tasks on each side of the split before a run may start
    min_validation: int = 4
    device: str = "cpu"
    image: str | None = None  # the Job's image; None: spec.image (with training, the full image unless set)
    resources: dict[str, Any] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    active_deadline_seconds: int = 7200
    check_seconds: int = 30  # how often Label Studio's annotations are counted

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> TrainingSpec | None:
        """None when the section is absent (training off)."""
        if raw is None:
            return None
        gate = raw.get("gate") or {}
        after = raw.get("afterAnnotations", 50)
        return cls(
            after_annotations=None if after is None or int(after) == 0 else int(after),  # 0 or null: on demand only
            min_interval_seconds=int(raw.get("minIntervalSeconds", 0)),
            trigger=str(raw.get("trigger", "")),
            project=None if raw.get("project") is None else int(raw["project"]),
            control=raw.get("control"),
            validation_fraction=float(raw.get("validationFraction", 0.2)),
            epochs=int(raw.get("epochs", 15)),
            image_size=int(raw.get("imageSize", 192)),
            batch=int(raw.get("batch", 16)),
            margin=float(gate.get("margin", 0.01)),
            max_recall_drop=float(gate.get("maxRecallDrop", 0.05)),
            min_train=int(raw.get("minTrainTasks", 8)),
            min_validation=int(raw.get("minValidationTasks", 4)),
            device=raw.get("device", "cpu"),
            image=raw.get("image"),
            resources=dict(raw.get("resources") or {}),
            node_selector=dict(raw.get("nodeSelector") or {}),
            tolerations=tuple(raw.get("tolerations") or ()),
            active_deadline_seconds=int(raw.get("activeDeadlineSeconds", 7200)),
            check_seconds=int(raw.get("checkSeconds", 30)),
        )


@dataclass(frozen=True)
class BackendSpec:
    """spec.backend: spec.image is any Label Studio ML backend (one made with Label Studio's ML SDK,
    one of HumanSignal's examples), not Prelabel's own. Absent: Prelabel's backend, configured by
    spec.model. What Prelabel's backend gets for free is declared here: how to start it, where it
    listens and answers health, what it may write (each path an emptyDir; the root stays read-only),
    the user it runs as, GPUs."""

    command: tuple[str, ...] = ()  # the container's command (the image's ENTRYPOINT when empty)
    args: tuple[str, ...] = ()
    port: int = 9090  # the port it listens on; also passed as PORT (Label Studio's ML SDK reads it)
    health_path: str = "/health"  # answers 200 once the model serves (readiness, startup and liveness)
    env: tuple[dict[str, Any], ...] = ()
    model_dir: str = "/data/models"  # an emptyDir there, passed as MODEL_DIR (the SDK's cache and job results)
    writable_dirs: tuple[str, ...] = ()  # more emptyDirs (caches, HOME); /tmp always is one
    run_as_user: int = 10001  # 0: the image runs as root (no restricted Pod Security then)
    gpu: int = 0  # nvidia.com/gpu in the container's limits

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> BackendSpec | None:
        """None when the section is absent (Prelabel's own backend)."""
        if raw is None:
            return None
        health = str(raw.get("healthPath", "/health"))
        if not health.startswith("/"):
            raise SpecError(f"spec.backend.healthPath {health!r} must be a path starting with '/'")
        dirs = tuple(str(d).rstrip("/") or "/" for d in raw.get("writableDirs") or ())
        for d in (str(raw.get("modelDir", "/data/models")), *dirs):
            if not d.startswith("/") or d == "/":
                raise SpecError(f"spec.backend.modelDir and writableDirs need absolute paths below '/', not {d!r}")
        return cls(
            command=tuple(str(c) for c in raw.get("command") or ()),
            args=tuple(str(a) for a in raw.get("args") or ()),
            port=int(raw.get("port", 9090)),
            health_path=health,
            env=tuple(raw.get("env") or ()),
            model_dir=str(raw.get("modelDir", "/data/models")).rstrip("/"),
            writable_dirs=dirs,
            run_as_user=int(raw.get("runAsUser", 10001)),
            gpu=int(raw.get("gpu", 0)),
        )


# Prelabel's backend images (Dockerfile.backend, Dockerfile.backend-lean): what serves when spec.image is unset.
FULL_IMAGE = f"ghcr.io/prelabel/prelabel-backend:{__version__}"  # torch and ultralytics: GPUs, training, exporting a .pt
LEAN_IMAGE = f"ghcr.io/prelabel/prelabel-backend-lean:{__version__}"  # no torch: ONNX Runtime and OpenVINO on CPU, a tenth the size


def default_image(device: str, training: bool, store: bool, weights: Weights) -> str:
    """The image spec.image defaults to: the lean one on CPU, unless what it serves needs torch: a
    GPU, the training loop (its Jobs, and the .pt versions it promotes), the model store's versions
    (.pt files), or a .pt from a volume or a URL (the lean image cannot export it). An image's own
    weights (weights.file) have their exports in both images."""
    from_outside = (weights.pvc_claim or weights.url) and str(weights.file_name or "").endswith(".pt")
    return FULL_IMAGE if device != "cpu" or training or store or from_outside else LEAN_IMAGE  # weights.version needs a store


@dataclass(frozen=True)
class MLBackendSpec:
    label_studio: LabelStudioSpec
    image: str = LEAN_IMAGE  # parse() picks it: default_image
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
    store: ModelStore | None = None
    training: TrainingSpec | None = None
    backend: BackendSpec | None = None  # any Label Studio ML backend; None: Prelabel's own

    @property
    def foreign(self) -> bool:
        """spec.image is not Prelabel's backend: its /setup fields, env and training are not there."""
        return self.backend is not None

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
        selector = _selector(ls.get("projectSelector"))
        if bool(projects) == (selector is not None):
            raise SpecError("spec.labelStudio.projects lists at least one project, or spec.labelStudio.projectSelector selects them: set one of the two")
        if selector is not None and spec.get("training") is not None and (spec.get("training") or {}).get("project") is None:
            raise SpecError("spec.training.project: name the project whose annotations train the model (projectSelector selects several)")
        address = ls.get("address") or {}
        model = spec.get("model") or {}
        service = spec.get("service") or {}
        auth = spec.get("basicAuthSecretRef")
        scaling = spec.get("autoscaling") or {}
        store = ModelStore.parse(model.get("store"))
        if store is None and (model.get("weights") or {}).get("version"):
            raise SpecError("spec.model.weights.version names a stored version: set spec.model.store too")
        if store is None and spec.get("training") is not None:
            raise SpecError("spec.training puts its candidates in a model store: set spec.model.store")
        backend = BackendSpec.parse(spec.get("backend"))
        if backend is not None and spec.get("training") is not None:
            raise SpecError("spec.training fine-tunes Prelabel's own backend: remove it, or spec.backend (any Label Studio ML backend)")
        if backend is not None and spec.get("image") in (None, FULL_IMAGE, LEAN_IMAGE):
            raise SpecError("spec.backend runs any Label Studio ML backend: set spec.image to its image")
        weights = _weights(model.get("weights") or {})
        device = model.get("device", "cpu")
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
                selector=selector,
            ),
            image=spec.get("image") or default_image(device, spec.get("training") is not None, store is not None, weights),
            image_pull_policy=spec.get("imagePullPolicy", cls.image_pull_policy),
            replicas=int(spec.get("replicas", 1)),
            score_threshold=float(model.get("scoreThreshold", 0.5)),
            weights=weights,
            device=device,
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
            prelabel=PrelabelSpec.parse(spec.get("prelabel"), foreign=backend is not None),
            store=store,
            training=TrainingSpec.parse(spec.get("training")),
            backend=backend,
        )
