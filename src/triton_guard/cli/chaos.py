"""`triton-guard chaos`: inject a fault into (or clear one from) a server started with --chaos."""

from __future__ import annotations

import argparse
import sys

from triton_guard import defaults
from triton_guard.chaos.command import CLEAR
from triton_guard.chaos.protocol import FAULT_NAMES
from triton_guard.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def add_parser(subparsers) -> None:
    chaos = subparsers.add_parser(
        "chaos",
        help="inject a fault into a server started with --chaos (exit 0 done, 1 refused, 2 unreachable)",
    )
    faults = [*FAULT_NAMES, CLEAR]
    chaos.add_argument("fault", choices=faults, metavar="FAULT", help=f"one of: {', '.join(faults)}")
    chaos.add_argument(
        "--model", default=defaults.CHAOS_TARGET_MODEL, help="the model to break (default: %(default)s)"
    )
    chaos.add_argument("--url", default=defaults.DEFAULT_URL, help="gRPC HOST:PORT (default: %(default)s)")
    chaos.add_argument(
        "--slow-ms", type=int, default=defaults.CHAOS_SLOW_MS, help="slow: added to each execute (default: %(default)s)"
    )
    chaos.add_argument(
        "--leak-mb-per-s",
        type=float,
        default=defaults.CHAOS_LEAK_MB_PER_S,
        help="leak: growth per model instance (default: %(default)s)",
    )
    chaos.add_argument(
        "--leak-cap-mb", type=float, default=defaults.CHAOS_LEAK_CAP_MB, help="leak: held at most (default: %(default)s)"
    )
    chaos.add_argument(
        "--drift-scale",
        type=float,
        default=defaults.CHAOS_DRIFT_SCALE,
        help="drift: weight noise, in units of each tensor's std (default: %(default)s)",
    )
    chaos.add_argument(
        "--seed", type=int, default=defaults.CHAOS_DRIFT_SEED, help="drift: noise seed (default: %(default)s)"
    )
    chaos.add_argument(
        "--timeout", type=float, default=defaults.CHAOS_TIMEOUT_S, help="seconds per gRPC call (default: %(default)s)"
    )
    chaos.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Send one fault (or clear) to the server's `chaos` model; print what is now active."""
    import json

    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from triton_guard.chaos.command import ChaosCommand
    from triton_guard.chaos.protocol import Fault, FaultError

    prog = "triton-guard chaos"
    try:
        command = ChaosCommand.build(
            args.fault,
            args.model,
            slow_ms=args.slow_ms,
            leak_mb_per_s=args.leak_mb_per_s,
            leak_cap_mb=args.leak_cap_mb,
            drift_scale=args.drift_scale,
            seed=args.seed,
        )
    except FaultError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    refused = f"{prog}: refused: the server at {args.url} was not started with --chaos (it has no '{defaults.CHAOS_MODEL}' model)"
    try:
        client = grpcclient.InferenceServerClient(args.url)
        if not client.is_model_ready(defaults.CHAOS_MODEL, client_timeout=args.timeout):
            print(refused, file=sys.stderr)
            return EXIT_FAILED
        text = grpcclient.InferInput("COMMAND", [1], "BYTES")
        text.set_data_from_numpy(np.array([command.to_json().encode()], dtype=np.object_))
        result = client.infer(defaults.CHAOS_MODEL, [text], client_timeout=args.timeout)
    except InferenceServerException as exc:
        status = str(exc.status())
        if status == "StatusCode.INVALID_ARGUMENT":  # the chaos model said no, and why
            print(f"{prog}: refused: {exc.message()}", file=sys.stderr)
            return EXIT_FAILED
        if status == "StatusCode.DEADLINE_EXCEEDED":
            print(f"{prog}: unreachable: no answer from {args.url} within {args.timeout:g} s", file=sys.stderr)
            return EXIT_USAGE
        if status in ("StatusCode.UNAVAILABLE", "StatusCode.UNKNOWN", "None"):
            print(f"{prog}: unreachable: {args.url}: {exc.message()}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{prog}: failed: {exc.message()}", file=sys.stderr)
        return EXIT_FAILED
    status = json.loads(result.as_numpy("STATUS")[0])
    previous = Fault.from_dict(status["previous"]).describe() if status["previous"] else None
    if status["fault"] is None:
        print(f"model '{status['model']}': cleared" + (f" (was {previous})" if previous else " (no fault was active)"))
    else:
        print(f"model '{status['model']}': {Fault.from_dict(status['fault']).describe()}")
    return EXIT_OK
