"""`triton-guard breaker MODEL open|close|auto`: an operator's override of a breaker on a running server.

The command goes over gRPC to the server's `guard_control` model (served by
`serve`), with the API key of the restricted APIs (a local serve's own key,
found by its port, else $TRITON_GUARD_API_KEY or $TRITON_GUARD_API_KEY_FILE);
the breaker keeps the override until `auto`
(docs/breaker.md, "The operator's override").
"""

from __future__ import annotations

import argparse
import sys

from triton_guard import defaults
from triton_guard.cli.arguments import add_url
from triton_guard.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE, refused, usage_error

PROG = "triton-guard breaker"
# gRPC status of a failed call -> what the operator is told, and the exit status.
_VERDICTS = {
    "StatusCode.INVALID_ARGUMENT": ("refused", EXIT_FAILED),  # a bad command or the wrong key: nothing changed
    "StatusCode.NOT_FOUND": ("refused", EXIT_FAILED),  # no such breaker, or no guard_control model
    "StatusCode.DEADLINE_EXCEEDED": ("unreachable", EXIT_USAGE),
    "StatusCode.UNAVAILABLE": ("unreachable", EXIT_USAGE),
    "StatusCode.UNKNOWN": ("unreachable", EXIT_USAGE),
    "None": ("unreachable", EXIT_USAGE),
}


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
    add_url(breaker)
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

    from triton_guard.errors import OverrideError
    from triton_guard.guard.override import OverrideCommand, describe
    from triton_guard.server.auth import api_key_for, restricted_hint

    key, _ = api_key_for(args.url)  # a local serve's own key by its port, else $TRITON_GUARD_API_KEY(_FILE)
    if not key:
        return refused(PROG, restricted_hint(args.url))
    try:
        command = OverrideCommand(args.model, args.mode, key)
    except OverrideError as exc:
        return usage_error(PROG, exc)
    try:
        client = grpcclient.InferenceServerClient(args.url)
        text = grpcclient.InferInput("COMMAND", [1], "BYTES")
        text.set_data_from_numpy(np.array([command.to_json().encode()], dtype=np.object_))
        result = client.infer(defaults.CONTROL_MODEL, [text], client_timeout=args.timeout)
    except InferenceServerException as exc:
        message = exc.message() or str(exc)
        if "unknown model" in message and f"'{defaults.CONTROL_MODEL}'" in message:
            message = f"the server at {args.url} has no '{defaults.CONTROL_MODEL}' model (start it with triton-guard serve)"
        verdict, exit_code = _VERDICTS.get(str(exc.status()), ("failed", EXIT_FAILED))
        if str(exc.status()) == "StatusCode.DEADLINE_EXCEEDED":
            message = f"no answer from {args.url} within {args.timeout:g} s"
        elif verdict == "unreachable":
            message = f"{args.url}: {message}"
        print(f"{PROG}: {verdict}: {message}", file=sys.stderr)
        return exit_code
    print(describe(json.loads(result.as_numpy("STATE")[0])))
    return EXIT_OK
