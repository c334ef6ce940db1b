"""The `triton-guard` command (contract: shared/design/ARCHITECTURE.md section 3)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from triton_guard import defaults

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _serve(args: argparse.Namespace) -> int:
    from triton_guard.server import LocalServer, Ports, ServerError, serve_forever

    server = LocalServer(
        model_repository=Path(args.model_repository),
        ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
        backends_source=Path(args.backends) if args.backends else None,
        model_config_name="gpu" if args.gpu else None,
    )
    try:
        return serve_forever(server)
    except ServerError as exc:
        print(f"triton-guard serve: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _probe(args: argparse.Namespace) -> int:
    import json

    from triton_guard.probe import ModelHealthValidator

    try:
        options = json.loads(args.options) if args.options else None
    except ValueError as exc:
        print(f"triton-guard probe: error: --options is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = ModelHealthValidator(args.url, args.timeout, options=options).check()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    elif result.ready:
        checks = len(result.report.checks) if result.report else 0
        print(f"ready: {checks} checks passed in {result.latency_s * 1000:.0f} ms")
    else:
        for reason in result.reasons:
            print(f"{result.health.value.replace('_', ' ')}: {reason}")
    return result.health.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triton-guard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run Triton with the guarded pipeline in the foreground")
    serve.add_argument("--model-repository", default="model_repository", help="default: %(default)s")
    serve.add_argument("--http-port", type=int, default=defaults.HTTP_PORT)
    serve.add_argument("--grpc-port", type=int, default=defaults.GRPC_PORT)
    serve.add_argument("--metrics-port", type=int, default=defaults.METRICS_PORT)
    serve.add_argument(
        "--backends",
        help="folder of Python-based backends (guard, canary); default: 'backends' beside the repository",
    )
    serve.add_argument(
        "--gpu", action="store_true", help="use the models' GPU configurations (configs/gpu.pbtxt)"
    )
    serve.set_defaults(func=_serve)

    probe = sub.add_parser(
        "probe",
        help="readiness probe: ask the server's canary (exit 0 ready, 1 not ready, 2 unreachable)",
    )
    probe.add_argument("--url", default=defaults.DEFAULT_URL, help="gRPC HOST:PORT (default: %(default)s)")
    probe.add_argument(
        "--timeout", type=float, default=defaults.PROBE_TIMEOUT_S, help="seconds in all (default: %(default)s)"
    )
    probe.add_argument("--json", action="store_true", help="print the full canary report")
    probe.add_argument("--options", help='per-call canary thresholds as JSON, e.g. \'{"strict_pins": true}\'')
    probe.set_defaults(func=_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
