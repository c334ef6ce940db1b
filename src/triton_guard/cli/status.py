"""`triton-guard status`: breakers, canary checks, drift and memory on one screen."""

from __future__ import annotations

import argparse

from triton_guard import defaults
from triton_guard.cli.arguments import add_url
from triton_guard.cli.exit_codes import EXIT_OK, EXIT_USAGE


def add_parser(subparsers) -> None:
    status = subparsers.add_parser("status", help="breakers, canary checks, drift and memory on one screen")
    add_url(status)
    status.add_argument(
        "--metrics-url", help=f"Triton's metrics endpoint (default: http://HOST:{defaults.METRICS_PORT}/metrics)"
    )
    status.add_argument("--timeout", type=float, default=defaults.PROBE_TIMEOUT_S, help="seconds per source")
    status.add_argument("--json", action="store_true", help="the same data as JSON, for scripts")
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    status.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from triton_guard.status import gather, render

    while True:
        status = gather(args.url, args.metrics_url, args.timeout)
        if args.json:
            print(json.dumps(status, indent=2, default=str), flush=True)
        else:
            if args.watch:
                print("\033[H\033[2J", end="")  # clear the screen, cursor home
            print(render(status), flush=True)
        if not args.watch:
            return EXIT_USAGE if status["health"] == "unreachable" else EXIT_OK
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return EXIT_OK
