"""kopf's settings for this operator (`configure`, run at kopf's startup) and its record of the last
handled spec (`DigestDiffBaseStorage`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, cast

import kopf

FINALIZER = "prelabel.dev/deregister"


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's record of the last handled spec (an annotation), as a digest of what kopf would record.

    kopf stores the whole spec (and the user's labels and annotations) in an annotation, and
    `kubectl apply` stores the whole object in another: a resource of about 128 KiB made both exceed
    Kubernetes' 256 KiB for all annotations together, every patch of kopf's was refused (HTTP 422),
    and the finalizer stayed for good. The handlers here reconcile the whole spec and never read
    kopf's old/new/diff, so a digest tells a change as well as the copy did."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        essence = super().build(body=body, extra_fields=extra_fields)
        # What the progress storage's clear() would drop afterwards (its annotations share our prefix),
        # dropped before hashing: a handler's progress is no change of the resource.
        self.remove_annotations(essence, {k for k in (essence.get("metadata") or {}).get("annotations") or {} if k.startswith(f"{self.prefix}/")})
        self.remove_empty_stanzas(essence)
        digest = hashlib.sha256(json.dumps(essence, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        return cast(kopf.BodyEssence, {"sha256": digest})


def configure(settings: kopf.OperatorSettings) -> None:
    settings.posting.level = logging.INFO
    # A watch that went silent (its connection dropped by a NAT, a load balancer, a stalled proxy;
    # kopf #787, #996, #1276) is abandoned after 70 s without any event, not even the bookmark the API
    # server sends about every 60 s, and kopf lists and watches again: a resource created meanwhile
    # is seen within about 70 s (tests/integration/test_outages.py). The server ends each watch
    # after 5 minutes anyway, and the client after 330 s, should both of those fail.
    settings.watching.inactivity_timeout = 70
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30  # a call on a silent pooled connection fails after 30 s, and is retried
    # Peering (several replicas, PRELABEL_PEERING): a replica that stops refreshing its record (a
    # killed pod) is presumed dead after 30 s, and the standby of the next priority takes over then.
    settings.peering.lifetime = 30
    settings.peering.stealth = True  # no log line per keep-alive
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="prelabel.dev")
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(prefix="prelabel.dev", key="last-handled-configuration")
    settings.execution.max_workers = int(os.environ.get("PRELABEL_MAX_WORKERS", "8"))
    # A resource deleted while its resync timer runs keeps its finalizer until kopf next polls the
    # timer: 60 s by default, which makes deletions hang for a minute. Poll every 2 s.
    settings.background.cancellation_polling = 2
    # No watching of CRDs and namespaces: that would need cluster-wide RBAC the operator has no other
    # use for. __main__ waits for the MLBackend CRD before starting instead.
    settings.scanning.disabled = True
