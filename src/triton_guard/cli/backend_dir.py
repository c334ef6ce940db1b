"""`triton-guard backend-dir`: print the folder holding the package's Python-based backends."""

from __future__ import annotations

import argparse

from triton_guard.cli.exit_codes import EXIT_OK


def add_parser(subparsers) -> None:
    backend_dir = subparsers.add_parser(
        "backend-dir",
        help="print the folder holding the guard and canary backends (link them into your tritonserver's backend dir)",
    )
    backend_dir.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triton_guard.server import BACKENDS_DIR

    print(BACKENDS_DIR)
    return EXIT_OK
