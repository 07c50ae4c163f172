"""`python -m prelabel_operator [--namespace NS ...]`: run the operator (all namespaces by default)."""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import random

import kopf
import prometheus_client


class RetryIsAWarning(logging.Filter):
    """kopf logs at ERROR what it retries by design: an API request that failed once ("Request attempt
    #1/9 failed; will retry", e.g. a 429 while a just-installed CRD's storage initializes) and a
    handler's TemporaryError ("Handler 'on_change' failed temporarily: not ready: ...", e.g. while
    Label Studio is down). Both are warnings; kopf's ERROR lines for what it gives up on
    ("escalating", "failed permanently", an unexpected exception) stay errors."""

    RETRIED = ("failed; will retry", "failed temporarily")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.name.startswith("kopf.") and any(r in record.getMessage() for r in self.RETRIED):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class QuietTimers(logging.Filter):
    """kopf logs every timer run that succeeded at INFO: with 500 MLBackends and the resync timer's
    30 s tick, 17 lines a second saying nothing happened. They are DEBUG here (LOG_LEVEL=DEBUG shows
    them); a timer that failed, and what a resync repaired (its Events), stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.name == "kopf.objects" and record.getMessage() == "Timer 'resync' succeeded.":
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class ObjectFormatter(logging.Formatter):
    """Prefixes kopf's per-object lines with [namespace/name], as kopf's own formatter does (its
    ObjectLogger puts the object in `k8s_ref`): else "Handler 'on_change' failed" says not which MLBackend."""

    def format(self, record: logging.LogRecord) -> str:
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            record = copy.copy(record)
            record.msg = f"[{ref.get('namespace') or ''}/{ref['name']}] {record.msg}"
        return super().format(record)


def main() -> None:
    parser = argparse.ArgumentParser(description="Prelabel operator: MLBackend resources -> running, registered YOLO backends")
    parser.add_argument("--namespace", "-n", action="append", default=[], help="watch only this namespace (repeatable)")
    parser.add_argument("--liveness", default=os.environ.get("PRELABEL_LIVENESS", "http://0.0.0.0:8080/healthz"),
                        help="kopf's liveness endpoint (PRELABEL_LIVENESS)")
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("PRELABEL_METRICS_PORT", "9100")),
                        help="Prometheus metrics port (PRELABEL_METRICS_PORT; 0: off)")
    parser.add_argument("--metrics-address", default=os.environ.get("PRELABEL_METRICS_ADDRESS", "0.0.0.0"),
                        help="address the metrics server binds (PRELABEL_METRICS_ADDRESS)")
    parser.add_argument("--peering", default=os.environ.get("PRELABEL_PEERING"),
                        help="kopf peering name for several replicas (only the one of highest priority works); standalone if unset")
    parser.add_argument("--peering-priority", type=int, default=int(os.environ.get("PRELABEL_PEERING_PRIORITY") or 0) or None,
                        help="this replica's peering priority; random if unset (replicas of equal priority would all pause)")
    args = parser.parse_args()
    handler = logging.StreamHandler()
    handler.setFormatter(ObjectFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), handlers=[handler])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per pre-labeling request is noise
    handler.addFilter(RetryIsAWarning())  # on the handler: a logger's filter misses its children's records
    handler.addFilter(QuietTimers())
    from . import handlers, kube  # handlers: registers them

    kube.wait_for_crd(handlers.GROUP, handlers.VERSION, handlers.PLURAL, logging.getLogger("prelabel_operator"))
    if args.peering:
        kube.ensure_peering(args.peering, args.namespace)
    if args.metrics_port:
        prometheus_client.start_http_server(args.metrics_port, addr=args.metrics_address)

    asyncio.run(kopf.operator(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=args.peering_priority or random.randint(1, 2**31),  # a tie-breaker for the election, not a secret
    ))


if __name__ == "__main__":
    main()
