"""Training requests: Label Studio's "Start Training", recorded for the operator.

Label Studio 1.23 sends the ML backend card's "Start Training" (the API's POST /api/ml/<id>/train) to
`<backend>/webhook` as `{"action": "START_TRAINING", "project": {<the project, as its webhooks
serialize it: id, title, label_config, counts...>}}`, with the backend's basic auth
(label_studio/ml/api_connector.py, MLApi.train, while the feature flag
ff_back_dev_1417_start_training_mlbackend_webhooks_250122_long is on, its default); with the flag off,
and before 1.4.1, it POSTs `/train` with `{"annotations": [...], "project": "<id>.<created>",
"label_config": ..., "params": {...}}` instead. This backend trains nothing in its own process: it
records the request, `/health` reports it as `{"requested_at": <ISO 8601 UTC or null>, "requests": n,
"project": <id or null>}`, and the operator, which reads each pod's /health, starts its gated
training loop from it.

The record is one small JSON file under MODEL_DIR (per pod: an emptyDir), shared by gunicorn's
WORKERS, which are processes: it is updated under an exclusive flock and replaced atomically, so a
reader never sees half of it and no request is lost between workers.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
FILE = "training-requests.json"
LOCK = ".training-requests.lock"
_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class TrainingRequests:
    requested_at: str | None = None  # the last request, ISO 8601 UTC to the millisecond; None: none yet
    requests: int = 0  # requests this pod received since it started
    project: int | None = None  # the Label Studio project of the last request, when it named one

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def project_id(value: Any) -> int | None:
    """The project a request names, in any of Label Studio's shapes: the webhook's project object
    ({"id": 12, ...}), /train's "12.1700000000" (id, then the project's creation time), a bare 12.
    None when it names none (absent, empty, another type)."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < 10**18 else None
    if isinstance(value, str):
        head = value.strip().split(".", 1)[0]
        return int(head) if _ID.fullmatch(head) else None
    return None


def read(model_dir: Path) -> TrainingRequests:
    """The recorded requests; none when nothing was recorded (or the file is unreadable: logged)."""
    try:
        raw = json.loads((model_dir / FILE).read_text())
        return TrainingRequests(requested_at=raw.get("requested_at"), requests=int(raw.get("requests", 0)),
                                project=raw.get("project"))
    except FileNotFoundError:
        return TrainingRequests()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.warning("cannot read %s (%s): training requests count from zero", model_dir / FILE, exc)
        return TrainingRequests()


def record(model_dir: Path, project: int | None, now: datetime | None = None) -> TrainingRequests:
    """Adds one request (at `now`, default the current time) and returns the record. Raises OSError
    when MODEL_DIR is not writable."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with (model_dir / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        current = read(model_dir)
        when = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")
        updated = TrainingRequests(requested_at=when, requests=current.requests + 1, project=project)
        partial = model_dir / f".{FILE}.{os.getpid()}.partial"
        partial.write_text(json.dumps(updated.as_json()))
        partial.replace(model_dir / FILE)
    log.info("training requested (project %s): request %d", project, updated.requests)
    return updated
