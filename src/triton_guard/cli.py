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
