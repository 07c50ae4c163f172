"""The flask app: Label Studio's ML-backend protocol and auth. No model logic lives here.

    GET  /health, /   {"status": "UP", "model_class": ...}; 503 with a reason while models load
    POST /setup       {project, schema, hostname, access_token, extra_params} -> {"model_version", "compatible", ...}
                      within Label Studio's 3 s read timeout: a model the config names that is not loaded yet
                      loads in the background meanwhile, and the answer lists it under "loading";
                      200 even for a config with nothing to serve yet (Label Studio connects a backend
                      only on 200): then "compatible": false and the reason in "error"; 422 for a
                      config that names something this backend cannot do (a bad model_path, ...)
    POST /predict     {tasks, label_config, project, params} -> {"results": [one per task, in order]}; with the
                      header X-Prelabel-Priority: batch (the operator's pre-labeling) its model calls wait
                      for those of requests without it (Label Studio's: a person waiting), priority.py
    POST /webhook     Label Studio's events: START_TRAINING records a training request (201, basic auth
                      when set: Label Studio sends it); annotation events 201, nothing changes; others 200
                      {"status": "Unknown event"}
    POST /train       Label Studio's older "Start Training": records a training request (201), whatever the body
    GET  /metrics     Prometheus text
    GET  /openapi.yaml, /openapi.json   this protocol as OpenAPI 3.0 (openapi.yaml beside this module)

Every refusal is a 4xx with {"error": reason}: a body over MAX_REQUEST_BYTES is 413 before it is read.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import memory, priority, training_requests
from .label_config import ConfigError, LabelConfig, UnsupportedConfig, parse
from .media import MediaFetcher
from .metrics import Metrics
from .model_store import ModelStore
from .predictor import Predictor
from .settings import Settings

log = logging.getLogger(__name__)
MODEL_CLASS = "PrelabelYOLO"
UNCONFIGURED_VERSION = "prelabel-unconfigured"  # what /setup reports before the config has a control to serve
OPENAPI = Path(__file__).resolve().parent / "openapi.yaml"
TRAIN_EVENTS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, **details: Any) -> None:
        super().__init__(message)
        self.status, self.details = status, details


class Backend:
    """What the routes share: models, media, parsed configs, readiness."""

    def __init__(self, settings: Settings, store: ModelStore | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = store or ModelStore(settings)
        self.media = MediaFetcher(settings)
        self.predictor = Predictor(settings, self.store, self.media, self.metrics)
        self.state, self.reason = "LOADING", "loading the default models"
        self._configs: OrderedDict[str, LabelConfig] = OrderedDict()
        self._project_schema: dict[str, str] = {}
        self._lock = threading.Lock()

    def load_defaults(self) -> None:
        """Loads every default model that exists, so the first request pays no load time. /health is UP
        once they serve; the runtime measurements wait until then (model_store.ModelStore.measurements_held)."""
        with self.store.measurements_held():
            self._load_defaults()

    def _load_defaults(self) -> None:
        loaded, missing = [], []
        if self.settings.model_weights:
            try:
                task = self.store.get(self.settings.model_weights).task
            except ConfigError as exc:
                self.state, self.reason = "ERROR", f"MODEL_WEIGHTS: {exc}"
                return
            defaults = {**self.settings.default_models, task: self.settings.model_weights}
            self.settings = dataclasses.replace(self.settings, default_models=defaults)
        for task, model_file in self.settings.default_models.items():
            try:
                model = self.store.get(model_file)
            except ConfigError as exc:
                missing.append(f"{task}: {exc}")
                continue
            loaded.append(model_file)
            self.metrics.model_load.labels(model.path.name).set(model.load_seconds)
        for line in missing:
            log.warning("default model not available, controls needing it will be refused: %s", line)
        if loaded:
            self.state, self.reason = "UP", ""
            self.metrics.ready.set(1)
        else:
            self.state, self.reason = "ERROR", "no default model could be loaded: " + "; ".join(missing)

    def config(self, xml: str) -> LabelConfig:
        with self._lock:
            if xml in self._configs:
                self._configs.move_to_end(xml)
                return self._configs[xml]
        config = parse(xml, self.settings, tracking=not self.store.lean)
        self.predictor.check(config)
        with self._lock:
            self._configs[xml] = config
            while len(self._configs) > 32:
                self._configs.popitem(last=False)
        return config

    def loading(self, xml: str) -> tuple[LabelConfig, list[str]] | None:
        """The parsed config and the model files it needs that are still loading (their loads started
        here, in the background), or None when every model it needs serves now (then `config` answers
        without waiting). Raises ConfigError for a file not found, or a background load that failed."""
        parsed = parse(xml, self.settings, tracking=not self.store.lean)
        files = sorted({c.model_file for c in parsed.controls})
        for model_file in files:
            failure = self.store.load_failure(model_file)
            if failure is not None:
                raise ConfigError(failure)
        waiting = [f for f in files if not self.store.ready(f)]
        for model_file in waiting:
            self.store.load_in_background(model_file)
        return (parsed, waiting) if waiting else None

    def remember_schema(self, project: str, xml: str) -> None:
        with self._lock:
            self._project_schema[project] = xml

    def schema_for(self, project: str) -> str | None:
        with self._lock:
            return self._project_schema.get(project)


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)")
    return body


def _project_id(body: dict[str, Any]) -> str:
    """Label Studio sends "<id>.<created timestamp>"; the id is the part before the dot."""
    project = body.get("project")
    return str(project).split(".", 1)[0] if project not in (None, "") else ""


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _config_or_error(backend: Backend, xml: Any) -> LabelConfig:
    if not isinstance(xml, str) or not xml.strip():
        raise BadRequest("no labeling config: send it as 'label_config' (or call /setup with 'schema' first)")
    try:
        return backend.config(xml)
    except UnsupportedConfig as exc:
        raise BadRequest(str(exc), 422, found=exc.found, reasons=exc.reasons, supported=exc.supported) from None
    except ConfigError as exc:
        raise BadRequest(str(exc), 422) from None


def _loading_answer(backend: Backend, config: LabelConfig, files: list[str]) -> Response:
    """/setup's answer while the config's models load: the model version they will serve (it hashes
    the weight files, not the loaded models), "compatible" as far as the config says, and the files in
    `loading`. Whether each model fits its control, and which labels its classes reach, come with the
    first /setup after the load; a model that turns out not to fit is then a 422."""
    return jsonify({"model_version": backend.predictor.model_version(config), "compatible": True, "loading": files,
                    "warnings": [f"loading {f} (in the background; /predict waits for it, the next /setup checks it)" for f in files]})


def create_app(settings: Settings | None = None, backend: Backend | None = None, load: str = "background") -> Flask:
    """load: "background" (serve /health 503 while loading), "now" (load before returning), "none"."""
    settings = settings or Settings.from_env()
    backend = backend or Backend(settings)
    app = Flask(__name__)
    app.config["BACKEND"] = backend
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes  # werkzeug: 413 before reading the body
    if load == "now":
        backend.load_defaults()
    elif load == "background":
        threading.Thread(target=backend.load_defaults, name="load-models", daemon=True).start()

    def _authorized() -> bool:
        credentials = settings.basic_auth
        if credentials is None:
            return True
        auth = request.authorization
        return auth is not None and auth.type == "basic" and (
            hmac.compare_digest(auth.username or "", credentials[0]) and hmac.compare_digest(auth.password or "", credentials[1]))

    def _denied() -> Response:
        response = jsonify({"error": "authentication required"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="prelabel-backend"'
        return response

    @app.before_request
    def _start() -> Response | None:
        g.started = time.monotonic()
        if request.path == "/webhook" and not settings.webhook_require_auth:
            return None  # annotation events come without credentials; START_TRAINING is checked in webhook()
        return None if _authorized() else _denied()

    def _record_training(project: Any) -> dict[str, Any]:
        try:
            recorded = training_requests.record(Path(settings.model_dir), training_requests.project_id(project))
        except OSError as exc:
            raise BadRequest(f"could not record the training request under MODEL_DIR ({settings.model_dir}): {exc}", 503) from None
        return recorded.as_json()

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        backend.metrics.requests.labels(route, str(response.status_code)).inc()
        seconds = time.monotonic() - g.get("started", time.monotonic())
        backend.metrics.latency.labels(route).observe(seconds)
        if route == "/predict":
            backend.metrics.predict.labels(priority.of_header(request.headers.get(priority.HEADER))).observe(seconds)
        return response

    @app.errorhandler(BadRequest)
    def _bad_request(exc: BadRequest) -> tuple[Response, int]:
        return jsonify({"error": str(exc), **exc.details}), exc.status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response, int]:
        if exc.code == 413:
            return jsonify({"error": f"the request body is over MAX_REQUEST_BYTES ({settings.max_request_bytes} bytes)"}), 413
        return jsonify({"error": exc.description}), exc.code or 500

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response, int]:
        log.error("unexpected error on %s %s", request.method, request.path, exc_info=exc)
        return jsonify({"error": f"internal error ({type(exc).__name__}); see the backend's log"}), 500

    @app.get("/")
    @app.get("/health")
    def health() -> tuple[Response, int]:
        # inference: what runs the models, lean.py or ultralytics (INFERENCE; the lean image: lean)
        body: dict[str, Any] = {"status": backend.state, "model_class": MODEL_CLASS, "inference": "lean" if backend.store.lean else "ultralytics",
                                "training": training_requests.read(Path(settings.model_dir)).as_json()}
        if kills := memory.oom_kills():  # a process of this container killed for memory (the operator's diagnosis reads it)
            body["oom_kills"] = kills
        if backend.state != "UP":
            body["reason"] = backend.reason
            return jsonify(body), 503
        body["models"] = {m.path.name: m.task for m in backend.store.loaded()}
        body["runtimes"] = {m.path.name: m.runtime for m in backend.store.loaded()}
        return jsonify(body), 200

    @app.post("/setup")
    def setup() -> Response:
        body = _json_body()
        project = _project_id(body)
        xml = body.get("schema")
        hostname, access_token = _optional_str(body, "hostname"), _optional_str(body, "access_token")
        if project:
            backend.media.remember_setup(project, hostname, access_token)
        if not isinstance(xml, str):
            raise BadRequest("no labeling config: send it as 'schema'")
        try:
            loading = backend.loading(xml) if xml.strip() else None
            if loading is not None:
                if project:
                    backend.remember_schema(project, xml)
                return _loading_answer(backend, *loading)
            config = backend.config(xml) if xml.strip() else None
            unsupported = None if config is not None else UnsupportedConfig([])
        except UnsupportedConfig as exc:
            config, unsupported = None, exc
        except ConfigError as exc:
            raise BadRequest(str(exc), 422) from None
        if config is None:
            # As HumanSignal's example: Label Studio may connect the backend to a project whose config
            # is not set yet (<View></View>) or has nothing to serve; the reason travels in the answer
            # (the operator's ConfigCompatible condition reads it), and /predict refuses with 422.
            assert unsupported is not None
            return jsonify({"model_version": UNCONFIGURED_VERSION, "compatible": False, "error": str(unsupported),
                            "found": unsupported.found, "reasons": unsupported.reasons, "supported": unsupported.supported})
        if project:
            backend.remember_schema(project, xml)
        answer: dict[str, Any] = {"model_version": backend.predictor.model_version(config), "compatible": True}
        gaps = backend.predictor.coverage(config)
        if gaps:
            answer["unmapped_labels"] = [{"control": g.control, "model": g.model_file, "unmapped": list(g.unmapped),
                                          "mapped": {k: list(v) for k, v in g.mapped.items()}, "unknown_classes": list(g.unknown)}
                                         for g in gaps]
        warnings = [g.describe() for g in gaps] + [f"not served: {reason}" for reason in config.skipped]
        if warnings:
            answer["warnings"] = warnings
        return jsonify(answer)

    @app.post("/predict")
    def predict() -> Response:
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        project = _project_id(body)
        config = _config_or_error(backend, body.get("label_config") or backend.schema_for(project))
        predictions = backend.predictor.predict(config, tasks, project or None, priority.of_header(request.headers.get(priority.HEADER)))
        return jsonify({"results": [p.as_json() for p in predictions]})

    @app.post("/webhook")
    def webhook() -> tuple[Response, int]:
        body = _json_body()
        event = body.get("action")
        if not isinstance(event, str):
            raise BadRequest("'action' (the webhook event name) is missing")
        if event not in TRAIN_EVENTS:
            return jsonify({"status": "Unknown event"}), 200
        if event != "START_TRAINING":
            # Annotations change nothing here: the operator counts them from Label Studio itself.
            return jsonify({"status": "ok", "event": event, "trained": False}), 201
        if not _authorized():  # Label Studio sends "Start Training" with the backend's basic auth
            return _denied(), 401
        # Recorded for the operator, which trains in a Job; no "job" key: Label Studio would poll /job_status.
        return jsonify({"status": "ok", "event": event, "trained": False, "training": _record_training(body.get("project"))}), 201

    @app.post("/train")
    def train() -> tuple[Response, int]:
        # Label Studio before 1.4.1, or with its START_TRAINING webhook flag off: {"annotations", "project":
        # "<id>.<created>", "label_config", "params"}. Only the project is read; any body records a request.
        body = request.get_json(silent=True)
        project = body.get("project") if isinstance(body, dict) else None
        return jsonify({"status": "ok", "event": "START_TRAINING", "trained": False, "training": _record_training(project)}), 201

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(backend.metrics.render(), mimetype=backend.metrics.content_type)

    @app.get("/openapi.yaml")
    def openapi_yaml() -> Response:
        return Response(OPENAPI.read_bytes(), mimetype="application/yaml")

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        import yaml  # here: the backend's cold start does not pay for it (issue 13)

        return jsonify(yaml.safe_load(OPENAPI.read_text()))

    return app
