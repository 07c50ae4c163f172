"""The operator's Prometheus metrics (served by `python -m prelabel_operator --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("prelabel_operator_reconciles", "Reconciles of MLBackend resources by outcome.", ["outcome"])
RECONCILE_SECONDS = Histogram("prelabel_operator_reconcile_seconds", "Time per reconcile.",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ERRORS = Counter("prelabel_operator_errors", "Reconcile problems by condition reason.", ["reason"])
REGISTRATIONS = Counter("prelabel_operator_registration_changes", "Registrations created, updated or deleted in Label Studio.", ["action"])
WAKEUPS = Counter("prelabel_operator_deployment_wakeups", "Reconciles started by a backend Deployment's event: it became Available "
                  "while its MLBackend waited for it, or stopped being Available while its MLBackend said it was.")
READY = Gauge("prelabel_operator_ready_backends", "MLBackends whose Ready condition is True, by namespace.", ["namespace", "name"])
PRELABEL_TASKS = Counter("prelabel_operator_prelabel_tasks", "Pre-labeling outcomes per task: predicted (stored in Label Studio), "
                         "failed_attempt (one failed try), failed (out of tries), pruned (deleted by retention, per prediction).", ["outcome"])
PRELABEL_PENDING = Gauge("prelabel_operator_prelabel_pending_tasks", "Tasks still to pre-label, by MLBackend.", ["namespace", "name"])
PRELABEL_SECONDS = Histogram("prelabel_operator_prelabel_batch_seconds", "Time per batch: predict (the backend's /predict) and "
                             "store (Label Studio's prediction import).", ["stage"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))

# The training loop (issue 25). Outcome: promoted (the gate let the candidate serve), refused (the gate
# kept the current model), failed (the Job failed or its report could not be read).
TRAINING_RUNS = Counter("prelabel_operator_training_runs", "Training runs by outcome: promoted, refused, failed.",
                        ["namespace", "name", "outcome"])
TRAINING_MAP50_95 = Gauge("prelabel_operator_training_last_map50_95", "Box mAP50-95 on the validation split in the last "
                          "run: model=candidate (the model trained) or current (the model that served).", ["namespace", "name", "model"])
TRAINING_SECONDS = Histogram("prelabel_operator_training_run_seconds", "Time per training run, the Job's start to its report.",
                             buckets=(10, 30, 60, 120, 300, 600, 900, 1800, 3600, 5400, 7200))
TRAINING_SAMPLES = Gauge("prelabel_operator_training_samples", "Annotated tasks in the last run's data snapshot, by split "
                         "(train, validation).", ["namespace", "name", "split"])
# Per model version (prelabel_operator.agreement): the caller removes the series of versions no longer
# in the model store, so the label's values stay few.
AGREEMENT_PRECISION = Gauge("prelabel_operator_agreement_precision", "Share of a model version's pre-labeled regions that "
                            "match a human annotation (IoU >= 0.5, same label).", ["namespace", "name", "model_version"])
AGREEMENT_RECALL = Gauge("prelabel_operator_agreement_recall", "Share of the human-annotated regions a model version's "
                         "pre-labels matched (IoU >= 0.5, same label).", ["namespace", "name", "model_version"])
