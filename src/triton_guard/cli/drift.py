"""`triton-guard drift record`: record a model's output distribution as the reference its guard compares with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from triton_guard import defaults
from triton_guard.cli.exit_codes import EXIT_FAILED, EXIT_OK


def add_parser(subparsers) -> None:
    drift = subparsers.add_parser("drift", help="output drift monitoring: record a model's reference distribution")
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
    drift_record.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
