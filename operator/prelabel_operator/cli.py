"""`prelabel`: the project's command line. `prelabel demo` runs the whole product locally."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="prelabel", description="Declarative ML pre-labeling for Label Studio on Kubernetes")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="Kubernetes, Label Studio, the operator and a YOLO backend on this machine: pre-label a demo project")
    demo.add_argument("--images", type=int, default=20, help="demo images to generate and pre-label")
    demo.add_argument("--keep", action="store_true", help="leave everything running until Ctrl-C")
    commands.add_parser("operator", help="run the operator (same as python -m prelabel_operator)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .dev.demo import run

        sys.exit(run(args.images, args.keep))
    sys.argv = ["prelabel operator", *rest]
    from .__main__ import main as operator_main

    operator_main()


if __name__ == "__main__":
    main()
