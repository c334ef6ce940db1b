"""Arguments several commands share, each with one help text: the server's --url and the `record` subcommands' shape."""

from __future__ import annotations

import argparse

from triton_guard import defaults

# Where the `record` subcommands write when --model-repository is not given.
LOCAL_REPOSITORY = "the one a local `triton-guard serve` at --url serves, else ./model_repository"


def add_url(parser: argparse.ArgumentParser, what: str = "gRPC HOST:PORT") -> None:
    """--url: the server's gRPC endpoint (default: defaults.DEFAULT_URL)."""
    parser.add_argument("--url", default=defaults.DEFAULT_URL, help=f"{what} (default: %(default)s)")


def add_record_command(
    subparsers, command: str, help: str, record_help: str, *, model: str, inputs: str, writes: str
) -> argparse.ArgumentParser:
    """`triton-guard COMMAND record`: its parser, with --url, --model, --inputs FILE and --model-repository DIR.

    `model` and `inputs` are those arguments' help texts; `writes` what the
    command writes under DIR.
    """
    parent = subparsers.add_parser(command, help=help)
    record = parent.add_subparsers(dest=f"{command}_command", required=True).add_parser("record", help=record_help)
    add_url(record)
    record.add_argument("--model", required=True, help=model)
    record.add_argument("--inputs", required=True, metavar="FILE", help=inputs)
    record.add_argument(
        "--model-repository", metavar="DIR",
        help=f"the repository the server loads MODEL from; writes {writes} (default: {LOCAL_REPOSITORY})",
    )
    return record
