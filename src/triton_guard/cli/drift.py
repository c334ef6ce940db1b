"""`triton-guard drift record`: record a model's output distribution as the reference its guard compares with."""

from __future__ import annotations

import argparse
from pathlib import Path

from triton_guard.cli.arguments import add_record_command
from triton_guard.cli.exit_codes import EXIT_OK, refused


def add_parser(subparsers) -> None:
    drift_record = add_record_command(
        subparsers,
        "drift",
        "output drift monitoring: record a model's reference distribution",
        "call MODEL with representative inputs and write DIR/MODEL/drift/OUTPUT.json (exit 0 written, 1 refused)",
        model="the model whose answers the guard will monitor",
        inputs="representative inputs: a KServe v2 JSON request body or an .npz of named arrays",
        writes="DIR/MODEL/drift/OUTPUT.json",
    )
    drift_record.add_argument("--output", required=True, help="the output to monitor")
    drift_record.add_argument(
        "--kind", required=True, choices=("probs", "values"),
        help="probs: class probabilities per row; values: real-valued rows (summarised by mean and spread)",
    )
    drift_record.add_argument("--timeout", type=float, default=30.0, help="seconds per gRPC call (default: %(default)s)")
    drift_record.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Record MODEL's OUTPUT on the inputs of a file as the drift reference its guard compares with."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from triton_guard.drift.record import (
        ModelShape, RecordError, guard_parameters_text, record, reference_path, renamed_guard_reference, write_reference)
    from triton_guard.inputs import InputsError, load_inputs, triton_datatype

    from triton_guard.canary.record import default_repository
    from triton_guard.model_source import served_tensors_source
    from triton_guard.server.auth import is_restricted_refusal, restricted_hint

    prog = "triton-guard drift record"
    repository = Path(args.model_repository) if args.model_repository else default_repository(args.url)
    if not (repository / args.model).is_dir():
        return refused(prog, f"model '{args.model}' is not in {repository} (give --model-repository)")
    try:
        inputs = load_inputs(Path(args.inputs))
    except InputsError as exc:
        return refused(prog, exc)
    client = grpcclient.InferenceServerClient(args.url)
    try:
        shape = ModelShape.from_config(client.get_model_config(args.model, client_timeout=args.timeout).config)
    except InferenceServerException as exc:
        hint = f" ({restricted_hint(args.url)})" if is_restricted_refusal(exc.message()) else ""
        return refused(prog, f"{args.url}: {exc.message()}{hint}")
    print(f"model '{args.model}': {served_tensors_source(args.url, repository, args.model)}")

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
        return refused(prog, exc)
    except InferenceServerException as exc:
        return refused(prog, f"model '{args.model}' failed: {exc.message()}")
    path = reference_path(repository, args.model, args.output)
    write_reference(path, document)
    print(f"wrote {path}: a '{args.kind}' reference of {document['rows']} answers of '{args.model}' output '{args.output}'")
    reference = renamed_guard_reference(repository, args.model, args.output)
    print(f"monitor it from the guard of '{args.model}' (its config.pbtxt parameters):")
    print(guard_parameters_text(args.output, args.kind, reference))
    print(f"or, guarding it now: --param drift_output={args.output} --param drift_kind={args.kind}"
          + (f" --param drift_reference={reference}" if reference else ""))
    return EXIT_OK
