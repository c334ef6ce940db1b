"""`triton-guard probe`: the readiness probe, which asks the server's canary."""

from __future__ import annotations

import argparse

from triton_guard import defaults
from triton_guard.cli.arguments import add_url
from triton_guard.cli.exit_codes import usage_error


def add_parser(subparsers) -> None:
    probe = subparsers.add_parser(
        "probe",
        help="readiness probe: ask the server's canary (exit 0 ready, 1 not ready, 2 unreachable)",
    )
    add_url(probe)
    probe.add_argument(
        "--timeout", type=float, default=defaults.PROBE_TIMEOUT_S, help="seconds in all (default: %(default)s)"
    )
    probe.add_argument("--json", action="store_true", help="print the full canary report")
    probe.add_argument("--options", help='per-call canary thresholds as JSON, e.g. \'{"strict_pins": true}\'')
    probe.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from triton_guard.canary.probe import ModelHealthValidator

    try:
        options = json.loads(args.options) if args.options else None
    except ValueError as exc:
        return usage_error("triton-guard probe", f"--options is not JSON: {exc}")
    result = ModelHealthValidator(args.url, args.timeout, options=options).check()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    elif result.ready:
        checks = len(result.report.checks) if result.report else 0
        print(f"ready: {checks} checks passed in {result.latency_s * 1000:.0f} ms")
        for note in result.report.notes if result.report else []:
            print(f"note: {note}")
    else:
        for reason in result.reasons:
            print(f"{result.health.value.replace('_', ' ')}: {reason}")
    return result.health.exit_code
