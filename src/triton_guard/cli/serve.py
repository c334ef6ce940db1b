"""`triton-guard serve`: run Triton with the guarded pipeline in the foreground."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from triton_guard import defaults
from triton_guard.cli.exit_codes import EXIT_FAILED, usage_error

# `serve` with no --model-repository serves ./model_repository (the checkout's demo) when there is one.
DEFAULT_MODEL_REPOSITORY = Path("model_repository")


def add_parser(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run Triton with the guarded pipeline in the foreground",
        description=(
            f"The {', '.join(defaults.RESTRICTED_APIS)} APIs need the header '{defaults.API_KEY_HEADER}: KEY' "
            f"on HTTP and gRPC; KEY comes from ${defaults.API_KEY_ENV}, or the file named by "
            f"${defaults.API_KEY_FILE_ENV}, or is generated for the run."
        ),
    )
    serve.add_argument(
        "--model-repository", help=f"the models to serve (default: ./{DEFAULT_MODEL_REPOSITORY}, if there is one)"
    )
    serve.add_argument("--http-port", type=int, default=defaults.HTTP_PORT)
    serve.add_argument("--grpc-port", type=int, default=defaults.GRPC_PORT)
    serve.add_argument("--metrics-port", type=int, default=defaults.METRICS_PORT)
    serve.add_argument(
        "--backends",
        help="folder of Python-based backends (guard, canary); default: the installed package's (triton-guard backend-dir)",
    )
    serve.add_argument(
        "--gpu", action="store_true", help="use the models' GPU configurations (configs/gpu.pbtxt)"
    )
    serve.add_argument(
        "--chaos",
        action="store_true",
        help="allow fault injection (`triton-guard chaos`): serves the 'chaos' model, arms the models' hooks",
    )
    serve.add_argument(
        "--host",
        default=defaults.SERVE_HOST,
        help="bind address of HTTP, gRPC and metrics (default: %(default)s, this host only; the image uses 0.0.0.0)",
    )
    serve.add_argument(
        "--allow-remote-chaos",
        action="store_true",
        help="let --chaos bind a non-loopback --host (anyone who reaches it can break models)",
    )
    serve.add_argument(
        "--exit-timeout",
        type=float,
        default=defaults.SERVER_STOP_TIMEOUT_S,
        help="seconds a stop waits for requests in flight before what is left is killed (default: %(default)s)",
    )
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from triton_guard.server import LocalServer, Ports, ServerError, is_loopback, serve_forever

    prog = "triton-guard serve"
    if args.chaos and not is_loopback(args.host) and not args.allow_remote_chaos:
        return usage_error(
            prog,
            f"--chaos lets any client break models: it binds loopback only; "
            f"--host {args.host} needs --allow-remote-chaos as well",
        )
    repository = Path(args.model_repository) if args.model_repository else DEFAULT_MODEL_REPOSITORY
    if args.model_repository is None and not repository.is_dir():
        print(
            f"{prog}: error: no model repository: pass --model-repository DIR "
            f"(there is no ./{DEFAULT_MODEL_REPOSITORY} in {Path.cwd()})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    server = LocalServer(
        model_repository=repository,
        ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
        backends_source=Path(args.backends) if args.backends else None,
        model_config_name="gpu" if args.gpu else None,
        chaos=args.chaos,
        host=args.host,
        exit_timeout_s=args.exit_timeout,
    )
    try:
        return serve_forever(server)
    except ServerError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
