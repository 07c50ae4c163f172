"""`prelabel`: the local mode's command line. `prelabel demo` runs the whole product on this machine.
The operator itself is `prelabel-operator` (python -m prelabel_operator), in its own package and image."""

from __future__ import annotations

import argparse
import sys

from . import processes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prelabel", description="Declarative ML pre-labeling for Label Studio on Kubernetes: the local mode")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="Kubernetes, Label Studio, the operator and a YOLO backend on this machine: pre-label a demo project")
    demo.add_argument("--images", type=int, default=20, help="demo images to generate and pre-label")
    demo.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C (or SIGTERM, SIGHUP)")
    down = commands.add_parser("down", help="stop what a local-mode run that was killed (kill -9) left running, from the records under "
                                            f"{processes.run_dir()}")
    down.add_argument("--all", action="store_true", help="also what live runs (a demo in another terminal, a test session) started")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        with processes.exit_on_signals():
            try:
                sys.exit(run(args.images, args.keep))
            except processes.Stopped as stopped:  # run() stopped what it started on the way out
                sys.exit(128 + stopped.signum)
            finally:
                processes.stop_owned()  # anything a failing stop in run()'s cleanup left
    if args.command == "down":
        ended = processes.stop_orphans(everything=args.all)
        for record in ended:
            print(f"stopped {record.name} (pid {record.pid}, started by pid {record.owner_pid}): {' '.join(record.argv)[:160]}")
        left = [r for r in processes.records() if processes.members(r)]
        print(f"{len(ended)} process group(s) stopped; {len(left)} still running, started by live runs"
              + (" (prelabel down --all stops them)" if left else ""))
        _clean_node()


def _clean_node() -> None:
    """A killed run's real node leaves more than processes: its containers (containerd's shims outlive
    it), mounts, cgroups, iptables chains and the bridge. Removed unless a live run's node holds the lock."""
    from pathlib import Path

    from . import node

    found = node.leftovers()
    if not found:
        return
    try:
        node.Node(Path()).stop()  # takes the node lock, then removes what node.leftovers() lists
    except node.NodeError as busy:
        print(f"a real node is still running: {busy}")
        return
    print(f"removed what a real node left: {len(found)} item(s) ({', '.join(sorted({f.split()[0] for f in found}))})")


if __name__ == "__main__":
    main()
