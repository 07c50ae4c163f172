"""`prelabel`: the local mode's command line. `prelabel demo` runs the whole product on this machine.
The operator itself is `prelabel-operator` (python -m prelabel_operator), in its own package and image."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prelabel", description="Declarative ML pre-labeling for Label Studio on Kubernetes: the local mode")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="Kubernetes, Label Studio, the operator and a YOLO backend on this machine: pre-label a demo project")
    demo.add_argument("--images", type=int, default=20, help="demo images to generate and pre-label")
    demo.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        sys.exit(run(args.images, args.keep))


if __name__ == "__main__":
    main()
