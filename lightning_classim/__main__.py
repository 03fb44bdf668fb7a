"""The ``classim`` command line (also ``python -m lightning_classim``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``classim <command> ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="classim",
        description="Class-similarity structure of classifiers (lightning_classim).",
        epilog="Run `classim <command> --help` for the options of a command.",
    )
    parser.add_argument("command", choices=["demo"], help="demo: train a small model and log its structure")
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if args else 2
    ns, _rest = parser.parse_known_args(args[:1])
    if ns.command == "demo":
        from lightning_classim.demo import main as demo_main

        return demo_main(args[1:])
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
