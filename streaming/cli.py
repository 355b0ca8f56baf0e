"""The ``sevo`` command line: one entry point, subcommands imported lazily (CONVENTIONS 12).

This is the only module that reads argv and the environment and wires the packages together.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

log = logging.getLogger("sevo")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sevo-engine")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


def _cmd_version(args: argparse.Namespace) -> int:
    import numpy
    import scipy
    import torch

    info = {
        "sevo-engine": _version(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(" ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def _add_version(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the engine's and its libraries' versions")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_version)


# Each entry adds one subcommand; the heavy imports happen inside the handlers.
_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_version]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sevo",
        description=(
            "Graph-aware online training for recommendation embeddings: a live item-item "
            "graph and SEvo optimizers (graph-smoothed embedding updates)."
        ),
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"sevo-engine {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sevo`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.warning("interrupted")
        return 130
    except (FileNotFoundError, ValueError) as exc:  # user errors: one clear line, no trace
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
