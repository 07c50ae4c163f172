"""Chaos: MLBackends created, updated, given a rotated key and deleted while the operator is
SIGKILLed at random moments, and what is left afterwards, counted from Label Studio's and the API
server's own answers (tests/integration/chaos.py; CI runs the same code with 8 backends and 5 kills):

    make bench-chaos          (or: .venv/bin/python bench/chaos_bench.py --backends 50 --kills 20 --seed 1)

Everything is real and on loopback except the backends: a local control plane (etcd, kube-apiserver,
controller-manager, scheduler, kwok), the chart installed with helm and the operator as a process
with its ServiceAccount's token, a real Label Studio (SQLite) with one project per MLBackend. The
backends are light protocol stand-ins on the Services' ClusterIPs (prelabel_local.fake_backends).
The kills are spread over the four phases; each phase waits for convergence before the next.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=int, default=50, help="MLBackends, each with a Label Studio project of its own")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the operator, spread over the four phases")
    parser.add_argument("--seed", type=int, help="the random moments' seed (default: a random one, printed)")
    parser.add_argument("--window", type=float, default=30, help="seconds after each phase's action in which its kills fall")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a phase may take to converge after its last kill")
    parser.add_argument("--resync", type=float, default=10, help="the operator's resync period (PRELABEL_RESYNC_SECONDS)")
    parser.add_argument("--json", type=Path, help="also write the outcome here")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**6)

    from label_studio_sdk import LabelStudio as Client

    from prelabel_local import chart
    from prelabel_local.cluster import LocalCluster, build
    from prelabel_local.fake_backends import FakeBackends
    from prelabel_local.label_studio_server import LabelStudio
    from tests.integration.chaos import Chaos

    work = Path(tempfile.mkdtemp(prefix="prelabel-chaos-"))
    cluster = ls = backends = chaos = None
    t0 = time.perf_counter()
    try:
        cluster = LocalCluster(build(quiet=True), with_controllers=True).start()
        ls = LabelStudio(workdir=work / "label-studio").start()
        service_account = chart.install(cluster)
        backends = FakeBackends(cluster.kubeconfig, work / "fake-backends.log").start()
        ls_client = Client(base_url=ls.url, api_key=ls.token)
        keys = (ls.token, str(ls_client.tokens.create().token))  # the legacy token, then a personal access token
        print(f"control plane, Label Studio and chart up in {time.perf_counter() - t0:.0f}s", flush=True)
        chaos = Chaos(cluster, service_account, ls.url, ls_client, keys, work, "chaos", args.backends, args.kills, seed,
                      args.window, args.timeout, resync_seconds=args.resync, log=lambda line: print(line, flush=True))
        t0 = time.perf_counter()
        outcome = chaos.run()
        wall = time.perf_counter() - t0
    finally:
        if chaos is not None:
            chaos.stop()
        if backends is not None:
            backends.stop()
        if ls is not None:
            ls.stop()
        if cluster is not None:
            cluster.stop()
    print(f"\nseed {seed}: {len(outcome.kills)} SIGKILLs ({', '.join(f'{k.phase}@{k.at}s' for k in outcome.kills)}), "
          f"{chaos.starts} operator starts, {wall:.0f}s in all")
    for phase, after in outcome.converged_after.items():
        print(f"  {phase:>6}: converged {after:5.1f}s after its last kill: {outcome.counts[phase]}")
    print(f"converged {outcome.after_last_kill:.1f}s after the last kill")
    if outcome.problems:
        print(f"NOT CONVERGED: {json.dumps(outcome.problems, indent=1)[:4000]}")
    if args.json:
        args.json.write_text(json.dumps({"seed": seed, "wall": wall, "starts": chaos.starts, "kills": [k.__dict__ for k in outcome.kills],
                                         "converged_after": outcome.converged_after, "counts": outcome.counts,
                                         "problems": outcome.problems}, indent=1))
    sys.exit(1 if outcome.problems else 0)


if __name__ == "__main__":
    main()
