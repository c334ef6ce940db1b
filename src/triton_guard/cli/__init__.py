"""The `triton-guard` command: main(argv) and the parser assembled from one module per command.

Each command module (serve, probe, status, breaker, chaos, goldens, guard, unguard,
drift, backend_dir) holds its arguments beside its handler: `add_parser(subparsers)`
adds the command, `run(args) -> int` runs it and returns the exit code
(cli/exit_codes.py).
"""

from __future__ import annotations

import argparse

from triton_guard.cli import backend_dir, breaker, chaos, drift, goldens, guard, probe, serve, status, unguard

# What `triton-guard --help` says first.
DESCRIPTION = "The `triton-guard` command (each command is described in the project's docs/, from docs/getting-started.md)."

# In the order `triton-guard --help` lists them.
COMMANDS = (serve, probe, status, breaker, chaos, goldens, guard, unguard, drift, backend_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triton-guard", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    return args.func(args)
