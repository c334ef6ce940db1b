"""The `triton-guard` command (contract: shared/design/ARCHITECTURE.md section 3)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from triton_guard import defaults
from triton_guard.chaos.command import CLEAR
from triton_guard.chaos.protocol import FAULT_NAMES

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


# `serve` with no --model-repository serves ./model_repository (the checkout's demo) when there is one.
DEFAULT_MODEL_REPOSITORY = Path("model_repository")


def _serve(args: argparse.Namespace) -> int:
    from triton_guard.server import LocalServer, Ports, ServerError, is_loopback, serve_forever

    prog = "triton-guard serve"
    if args.chaos and not is_loopback(args.host) and not args.allow_remote_chaos:
        print(
            f"{prog}: error: --chaos lets any client break models: it binds loopback only; "
            f"--host {args.host} needs --allow-remote-chaos as well",
            file=sys.stderr,
        )
        return EXIT_USAGE
    repository = Path(args.model_repository) if args.model_repository else DEFAULT_MODEL_REPOSITORY
    if args.model_repository is None and not repository.is_dir():
        print(
            f"triton-guard serve: error: no model repository: pass --model-repository DIR "
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


def _probe(args: argparse.Namespace) -> int:
    import json

    from triton_guard.canary.probe import ModelHealthValidator

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
        for note in result.report.notes if result.report else []:
            print(f"note: {note}")
    else:
        for reason in result.reasons:
            print(f"{result.health.value.replace('_', ' ')}: {reason}")
    return result.health.exit_code


def _chaos(args: argparse.Namespace) -> int:
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


def _status(args: argparse.Namespace) -> int:
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


def _goldens_record(args: argparse.Namespace) -> int:
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
            print(f"{prog}: error: --tolerance {item!r}: expected [OUTPUT=]NUMBER >= 0", file=sys.stderr)
            return EXIT_USAGE
        if name:
            tolerances[name] = number
        else:
            default_tolerance = number
    try:
        recorded = record(
            args.url, args.model, Path(args.inputs), Path(args.model_repository), args.name,
            tolerances, default_tolerance, args.device_class, args.metrics_url, args.timeout,
        )
    except RecordRefused as exc:
        print(f"{prog}: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RecordUsage as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for line in recorded.describe():
        print(line)
    return EXIT_OK


def _guard(args: argparse.Namespace) -> int:
    from triton_guard.guard_writer import GuardRefused, parse_params, write_guard, write_in_process

    try:
        params = parse_params(args.param)
        if args.in_process:
            if args.ensemble:
                raise GuardRefused("--ensemble with --in-process: clients keep calling the model itself, nothing to reroute")
            written = write_in_process(Path(args.model_repository), args.model, params)
        else:
            written = write_guard(Path(args.model_repository), args.model, params, ensemble=args.ensemble)
    except GuardRefused as exc:
        print(f"triton-guard guard: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(written.lines()))
    return EXIT_OK


def _drift_record(args: argparse.Namespace) -> int:
    """Record MODEL's OUTPUT on the inputs of a file as the drift reference its guard compares with."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from triton_guard.drift.record import (
        ModelShape, RecordError, guard_parameters_text, record, reference_path, write_reference)
    from triton_guard.inputs import InputsError, load_inputs, triton_datatype

    prog = "triton-guard drift record"
    repository = Path(args.model_repository)
    if not (repository / args.model).is_dir():
        print(f"{prog}: refused: model '{args.model}' is not in {repository} (give --model-repository)", file=sys.stderr)
        return EXIT_FAILED
    try:
        inputs = load_inputs(Path(args.inputs))
    except InputsError as exc:
        print(f"{prog}: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    client = grpcclient.InferenceServerClient(args.url)
    try:
        shape = ModelShape.from_config(client.get_model_config(args.model, client_timeout=args.timeout).config)
    except InferenceServerException as exc:
        print(f"{prog}: refused: {args.url}: {exc.message()}", file=sys.stderr)
        return EXIT_FAILED

    def infer(batch: dict) -> np.ndarray:
        tensors = []
        for name, array in batch.items():
            tensor = grpcclient.InferInput(name, list(array.shape), triton_datatype(array))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(args.output)]
        return client.infer(args.model, tensors, outputs=outputs, client_timeout=args.timeout).as_numpy(args.output)

    try:
        document = record(shape, inputs, args.output, args.kind, infer, source=Path(args.inputs).name)
    except RecordError as exc:
        print(f"{prog}: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except InferenceServerException as exc:
        print(f"{prog}: refused: model '{args.model}' failed: {exc.message()}", file=sys.stderr)
        return EXIT_FAILED
    path = reference_path(repository, args.model, args.output)
    write_reference(path, document)
    print(f"wrote {path}: a '{args.kind}' reference of {document['rows']} answers of '{args.model}' output '{args.output}'")
    print(f"monitor it from the guard of '{args.model}' (its config.pbtxt parameters):")
    print(guard_parameters_text(args.output, args.kind))
    return EXIT_OK


def _backend_dir(args: argparse.Namespace) -> int:
    from triton_guard.server import BACKENDS_DIR

    print(BACKENDS_DIR)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triton-guard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
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

    status = sub.add_parser("status", help="breakers, canary checks, drift and memory on one screen")
    status.add_argument("--url", default=defaults.DEFAULT_URL, help="gRPC HOST:PORT (default: %(default)s)")
    status.add_argument(
        "--metrics-url", help=f"Triton's metrics endpoint (default: http://HOST:{defaults.METRICS_PORT}/metrics)"
    )
    status.add_argument("--timeout", type=float, default=defaults.PROBE_TIMEOUT_S, help="seconds per source")
    status.add_argument("--json", action="store_true", help="the same data as JSON, for scripts")
    status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    status.set_defaults(func=_status)

    chaos = sub.add_parser(
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
    chaos.set_defaults(func=_chaos)

    goldens = sub.add_parser("goldens", help="golden cases the canary checks (see `goldens record`)")
    goldens_sub = goldens.add_subparsers(dest="goldens_command", required=True)
    record = goldens_sub.add_parser(
        "record",
        help="record MODEL's answers to FILE as a golden case beside the model (exit 0 recorded, 1 refused, 2 usage)",
    )
    record.add_argument("--url", default=defaults.DEFAULT_URL, help="gRPC HOST:PORT (default: %(default)s)")
    record.add_argument("--model", required=True, help="the model to check")
    record.add_argument(
        "--inputs", required=True, metavar="FILE",
        help="a KServe v2 JSON inference request body, or an .npz of named arrays",
    )
    record.add_argument(
        "--model-repository", default="model_repository",
        help="the repository the server loads MODEL from; writes MODEL/goldens/NAME.golden.json (default: %(default)s)",
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
    record.set_defaults(func=_goldens_record)

    guard = sub.add_parser(
        "guard",
        help="add a guard for MODEL to a model repository (exit 0 written, 1 refused: nothing written)",
    )
    guard.add_argument("model", metavar="MODEL", help="the model to guard (a folder of the repository)")
    guard.add_argument("--model-repository", required=True, metavar="DIR", help="the repository MODEL is in")
    guard.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="a guard parameter (README \"Guard parameters\"), e.g. timeout_ms=2000; repeat for more",
    )
    guard.add_argument(
        "--ensemble", metavar="NAME", help="also reroute the steps of ensemble NAME that call MODEL through the guard"
    )
    guard.add_argument(
        "--in-process", action="store_true",
        help="guard a Python MODEL inside its own process: its config becomes backend \"guard\" (no second model)",
    )
    guard.set_defaults(func=_guard)

    drift = sub.add_parser("drift", help="output drift monitoring: record a model's reference distribution")
    drift_sub = drift.add_subparsers(dest="drift_command", required=True)
    drift_record = drift_sub.add_parser(
        "record",
        help="call MODEL with representative inputs and write DIR/MODEL/drift/OUTPUT.json (exit 0 written, 1 refused)",
    )
    drift_record.add_argument("--url", default=defaults.DEFAULT_URL, help="gRPC HOST:PORT (default: %(default)s)")
    drift_record.add_argument("--model", required=True, help="the model whose answers the guard will monitor")
    drift_record.add_argument(
        "--inputs", required=True, help="representative inputs: a KServe v2 JSON request body or an .npz of named arrays"
    )
    drift_record.add_argument("--output", required=True, help="the output to monitor")
    drift_record.add_argument(
        "--kind", required=True, choices=("probs", "values"),
        help="probs: class probabilities per row; values: real-valued rows (summarised by mean and spread)",
    )
    drift_record.add_argument("--model-repository", default="model_repository", help="default: %(default)s")
    drift_record.add_argument("--timeout", type=float, default=30.0, help="seconds per gRPC call (default: %(default)s)")
    drift_record.set_defaults(func=_drift_record)

    backend_dir = sub.add_parser(
        "backend-dir",
        help="print the folder holding the guard and canary backends (link them into your tritonserver's backend dir)",
    )
    backend_dir.set_defaults(func=_backend_dir)
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
