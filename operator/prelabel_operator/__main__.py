"""`python -m prelabel_operator [--namespace NS ...]`: run the operator (all namespaces by default)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import kopf


def main() -> None:
    parser = argparse.ArgumentParser(description="Prelabel operator: MLBackend resources -> running, registered YOLO backends")
    parser.add_argument("--namespace", "-n", action="append", default=[], help="watch only this namespace (repeatable)")
    parser.add_argument("--liveness", default=os.environ.get("PRELABEL_LIVENESS", "http://0.0.0.0:8080/healthz"),
                        help="kopf's liveness endpoint")
    parser.add_argument("--peering", default=os.environ.get("PRELABEL_PEERING"), help="peering name for several replicas; standalone if unset")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import handlers  # noqa: F401 - registers the handlers

    asyncio.run(kopf.operator(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        standalone=args.peering is None,
        peering_name=args.peering,
    ))


if __name__ == "__main__":
    main()
