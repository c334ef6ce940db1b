"""`triton-guard chaos`: inject a fault into (or clear one from) a server started with --chaos."""

from __future__ import annotations

import argparse
import sys

from triton_guard import defaults
from triton_guard.chaos.command import CLEAR
from triton_guard.chaos.protocol import FAULT_NAMES
from triton_guard.cli.arguments import add_url
from triton_guard.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE, refused, usage_error


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
    add_url(chaos)
    for flag, kind, default, what in (
        ("--slow-ms", int, defaults.CHAOS_SLOW_MS, "slow: added to each execute"),
        ("--leak-mb-per-s", float, defaults.CHAOS_LEAK_MB_PER_S, "leak: growth per model instance"),
        ("--leak-cap-mb", float, defaults.CHAOS_LEAK_CAP_MB, "leak: held at most"),
        ("--drift-scale", float, defaults.CHAOS_DRIFT_SCALE, "drift: weight noise, in units of each tensor's std"),
        ("--seed", int, defaults.CHAOS_DRIFT_SEED, "drift: noise seed"),
        ("--timeout", float, defaults.CHAOS_TIMEOUT_S, "seconds per gRPC call"),
    ):
        chaos.add_argument(flag, type=kind, default=default, help=f"{what} (default: %(default)s)")
    chaos.add_argument(
        "--instance",
        type=int,
        metavar="N",
        help="leak: only in the model's instance N, the N of Triton's instance name <model>_<group>_N "
        "(e.g. 1 for classifier_0_1, as `triton-guard status` lists them; with several instance groups, "
        "instance N of each group); default: every instance",
    )
    chaos.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Send one fault (or clear) to the server's `chaos` model; print what is now active."""
    import json

    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from triton_guard.chaos.command import ChaosCommand, check_instance
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
            instance=args.instance,
        )
    except FaultError as exc:
        return usage_error(prog, exc)
    if args.instance is not None and args.fault != "leak":
        return usage_error(prog, "--instance goes with leak only (the other faults act on every instance)")
    try:
        client = grpcclient.InferenceServerClient(args.url)
        if not client.is_model_ready(defaults.CHAOS_MODEL, client_timeout=args.timeout):
            return refused(prog, f"the server at {args.url} was not started with --chaos "
                                 f"(it has no '{defaults.CHAOS_MODEL}' model)")
        if args.instance is not None:  # refuse an index the model does not have, naming the ones it has
            config = client.get_model_config(args.model, as_json=True, client_timeout=args.timeout)["config"]
            check_instance(args.instance, args.model, config)
        text = grpcclient.InferInput("COMMAND", [1], "BYTES")
        text.set_data_from_numpy(np.array([command.to_json().encode()], dtype=np.object_))
        result = client.infer(defaults.CHAOS_MODEL, [text], client_timeout=args.timeout)
    except FaultError as exc:  # --instance N names no instance of the model
        return refused(prog, exc)
    except InferenceServerException as exc:
        status = str(exc.status())
        if status == "StatusCode.INVALID_ARGUMENT":  # the chaos model said no, and why
            return refused(prog, exc.message())
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
