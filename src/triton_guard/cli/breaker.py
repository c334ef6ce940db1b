"""`triton-guard breaker MODEL open|close|auto`: an operator's override of a breaker on a running server.

The command goes over gRPC to the server's `guard_control` model (served by
`serve`), with the API key of the restricted APIs ($TRITON_GUARD_API_KEY or
$TRITON_GUARD_API_KEY_FILE); the breaker keeps the override until `auto`
(docs/breaker.md, "The operator's override").
"""

from __future__ import annotations

import argparse
import sys

from triton_guard import defaults
from triton_guard.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE

PROG = "triton-guard breaker"


def add_parser(subparsers) -> None:
    breaker = subparsers.add_parser(
        "breaker",
        help="force a model's breaker open or closed until `auto`; needs the API key "
        "(exit 0 done, 1 refused, 2 unreachable)",
    )
    breaker.add_argument("model", metavar="MODEL", help="the guarded model whose breaker to override")
    breaker.add_argument(
        "mode",
        choices=("open", "close", "auto"),
        help="open: refuse every call; close: admit every call, count nothing; auto: the breaker decides again",
    )
    breaker.add_argument("--url", default=defaults.DEFAULT_URL, help="gRPC HOST:PORT (default: %(default)s)")
    breaker.add_argument(
        "--timeout", type=float, default=defaults.BREAKER_COMMAND_TIMEOUT_S,
        help="seconds for the call (default: %(default)s)",
    )  # fmt: skip
    breaker.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from triton_guard.guard.override import OverrideCommand, OverrideError, describe
    from triton_guard.server.auth import admin_headers_from_environment
    from triton_guard.server.errors import ServerError

    try:
        key = admin_headers_from_environment(grpc=False).get(defaults.API_KEY_HEADER)
    except ServerError as exc:  # a key file that cannot be read
        print(f"{PROG}: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not key:
        print(f"{PROG}: refused: set ${defaults.API_KEY_ENV} (or ${defaults.API_KEY_FILE_ENV}) to the server's "
              "API key (the key of its restricted APIs)", file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    try:
        command = OverrideCommand(args.model, args.mode, key)
    except OverrideError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = grpcclient.InferenceServerClient(args.url)
        text = grpcclient.InferInput("COMMAND", [1], "BYTES")
        text.set_data_from_numpy(np.array([command.to_json().encode()], dtype=np.object_))
        result = client.infer(defaults.CONTROL_MODEL, [text], client_timeout=args.timeout)
    except InferenceServerException as exc:
        status, message = str(exc.status()), exc.message() or str(exc)
        if status in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"):
            if "unknown model" in message and f"'{defaults.CONTROL_MODEL}'" in message:
                message = f"the server at {args.url} has no '{defaults.CONTROL_MODEL}' model (start it with triton-guard serve)"
            print(f"{PROG}: refused: {message}", file=sys.stderr)
            return EXIT_FAILED
        if status == "StatusCode.DEADLINE_EXCEEDED":
            print(f"{PROG}: unreachable: no answer from {args.url} within {args.timeout:g} s", file=sys.stderr)
            return EXIT_USAGE
        if status in ("StatusCode.UNAVAILABLE", "StatusCode.UNKNOWN", "None"):
            print(f"{PROG}: unreachable: {args.url}: {message}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{PROG}: failed: {message}", file=sys.stderr)
        return EXIT_FAILED
    print(describe(json.loads(result.as_numpy("STATE")[0])))
    return EXIT_OK
