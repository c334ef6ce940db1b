"""`triton-guard goldens record`: record a model's answers as a golden case the canary checks."""

from __future__ import annotations

import argparse
from pathlib import Path

from triton_guard import defaults
from triton_guard.cli.arguments import add_record_command
from triton_guard.cli.exit_codes import EXIT_OK, refused, usage_error


def add_parser(subparsers) -> None:
    record = add_record_command(
        subparsers,
        "goldens",
        "golden cases the canary checks (see `goldens record`)",
        "record MODEL's answers to FILE as a golden case beside the model (exit 0 recorded, 1 refused, 2 usage)",
        model="the model to check",
        inputs="a KServe v2 JSON inference request body, or an .npz of named arrays",
        writes="DIR/MODEL/goldens/NAME.golden.json",
    )
    record.add_argument("--name", help="the case's name (default: FILE's name without its extension)")
    record.add_argument(
        "--tolerance", action="append", metavar="[OUTPUT=]NUMBER",
        help=f"float outputs pass within NUMBER x max(1, |golden|) (default {defaults.GOLDEN_TOLERANCE:g}); "
        "repeat with OUTPUT= for one output; integer and BYTES outputs are always exact",
    )
    record.add_argument(
        "--device-class", choices=("auto", "cpu", "gpu"), default="auto",
        help="whose expectations these are (default: the one the server's canary reports)",
    )
    record.add_argument(
        "--metrics-url", help="tell cpu from gpu by the GPU gauges on this /metrics instead of asking the canary"
    )
    record.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default: %(default)s)")
    record.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Record MODEL's answers to --inputs as a golden case beside the model (exit 0, 1 refused, 2 usage)."""
    from triton_guard.canary.record import RecordRefused, RecordUsage, record

    prog = "triton-guard goldens record"
    default_tolerance, tolerances = defaults.GOLDEN_TOLERANCE, {}
    for item in args.tolerance or []:
        name, _, value = item.rpartition("=")
        try:
            number = float(value)
            if not (number >= 0 and number != float("inf")):
                raise ValueError
        except ValueError:
            return usage_error(prog, f"--tolerance {item!r}: expected [OUTPUT=]NUMBER >= 0")
        if name:
            tolerances[name] = number
        else:
            default_tolerance = number
    try:
        recorded = record(
            args.url, args.model, Path(args.inputs), Path(args.model_repository) if args.model_repository else None, args.name,
            tolerances, default_tolerance, args.device_class, args.metrics_url, args.timeout,
        )
    except RecordRefused as exc:
        return refused(prog, exc)
    except RecordUsage as exc:
        return usage_error(prog, exc)
    for line in recorded.describe():
        print(line)
    return EXIT_OK
