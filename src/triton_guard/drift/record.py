"""Recording a drift reference: a model's answers to representative inputs, summarised.

`triton-guard drift record` (triton_guard.cli) calls a model on a real server
with the inputs of a file (triton_guard.inputs: a KServe v2 JSON body or an
.npz) and writes DIR/MODEL/drift/OUTPUT.json, the reference a guard's drift
monitor compares its window with. The logic here is plain: the server call
is a function handed in, so tests drive it with a fake.

Inputs of a batched model (max_batch_size > 0) are sent in requests of at
most max_batch_size rows. An unbatched model takes one request per entry of
the arrays' first axis when they have one dimension more than the model's
inputs (N examples), else the file is one request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from triton_guard import defaults
from triton_guard.drift.monitor import build_reference, reference_document
from triton_guard.errors import DriftReferenceError, RecordError


@dataclass(frozen=True)
class ModelShape:
    """What the recorder needs of a model's config."""

    name: str
    max_batch_size: int
    inputs: Mapping[str, tuple[int, ...]]  # name -> dims (without the batch dimension)
    outputs: Mapping[str, tuple[int, ...]]

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a tritonclient model_config_pb2.ModelConfig."""
        return cls(config.name, config.max_batch_size,
                   {i.name: tuple(i.dims) for i in config.input}, {o.name: tuple(o.dims) for o in config.output})


def request_batches(shape: ModelShape, inputs: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The requests that send `inputs` to the model (RecordError naming the tensor when they do not fit)."""
    unknown = sorted(set(inputs) - set(shape.inputs))
    if unknown:
        raise RecordError(f"model '{shape.name}' has no input '{unknown[0]}' (inputs: {', '.join(shape.inputs)})")
    arrays = dict(inputs)
    if shape.batched:
        lengths = {len(a) if a.ndim else 0 for a in arrays.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise RecordError(f"the inputs' first (batch) dimensions differ or are empty: "
                              f"{ {n: list(a.shape) for n, a in arrays.items()} }")
        n = lengths.pop()
        step = shape.max_batch_size
        return [{name: a[i : i + step] for name, a in arrays.items()} for i in range(0, n, step)]
    examples = {name: a.ndim == len(shape.inputs[name]) + 1 for name, a in arrays.items()}
    if all(examples.values()):
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise RecordError("the inputs hold different numbers of examples along their first axis")
        return [{name: a[i] for name, a in arrays.items()} for i in range(lengths.pop())]
    return [arrays]


def output_rows(shape: ModelShape, output: str, answers: list[np.ndarray]) -> np.ndarray:
    """The answers' rows [n, width] as the monitor will see them (one row per batch entry; a whole answer unbatched)."""
    if output not in shape.outputs:
        raise RecordError(f"model '{shape.name}' has no output '{output}' (outputs: {', '.join(shape.outputs)})")
    per_answer = [a.reshape(len(a), -1) if shape.batched else a.reshape(1, -1) for a in answers]
    widths = {rows.shape[1] for rows in per_answer}
    if len(widths) != 1:
        raise RecordError(f"output '{output}' has rows of different sizes {sorted(widths)}: "
                          "the drift monitor needs fixed-size rows")
    if any(a.dtype == np.object_ for a in answers):
        raise RecordError(f"output '{output}' is BYTES: the drift monitor watches numeric outputs")
    return np.concatenate(per_answer).astype(np.float64)


def record(shape: ModelShape, inputs: Mapping[str, np.ndarray], output: str, kind: str,
           infer: Callable[[dict[str, np.ndarray]], np.ndarray],
           min_rows: int = defaults.DRIFT_REFERENCE_MIN_ROWS, source: str = "") -> dict:
    """Call `infer` (one request -> the output array) for every request; the reference document."""
    if output not in shape.outputs:
        raise RecordError(f"model '{shape.name}' has no output '{output}' (outputs: {', '.join(shape.outputs)})")
    answers = [np.asarray(infer(batch)) for batch in request_batches(shape, inputs)]
    rows = output_rows(shape, output, answers)
    if len(rows) < min_rows:
        raise RecordError(f"only {len(rows)} answers: a reference needs at least {min_rows} "
                          "(its own sampling error would raise alarms)")
    try:
        reference = build_reference(kind, rows)
    except DriftReferenceError as exc:
        raise RecordError(f"output '{output}': {exc}") from None
    return reference_document(reference, shape.name, output, shape.batched,
                              {"rows": len(rows), "inputs": source})


def reference_path(repository: Path, model: str, output: str) -> Path:
    return Path(repository) / model / defaults.DRIFT_REFERENCE_DIR / f"{output}.json"


def write_reference(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document) + "\n")


def renamed_guard_reference(repository: Path, model: str, output: str) -> str | None:
    """The drift_reference a guard needs when MODEL is a renamed guard (its default looks beside the moved model), else None."""
    from triton_guard.guard_writer import RENAMED
    from triton_guard.guard_writer.changes import record_of

    try:
        record = record_of(Path(repository) / model)
    except ValueError:
        return None
    if record is None or record.get("placement") != RENAMED:
        return None
    return f"{model}/{defaults.DRIFT_REFERENCE_DIR}/{output}.json"


def guard_parameters_text(output: str, kind: str, reference: str | None = None) -> str:
    """What to add to the guard's config.pbtxt `parameters` to monitor this output."""
    lines = [f'  {{ key: "drift_output", value: {{ string_value: "{output}" }} }}',
             f'  {{ key: "drift_kind", value: {{ string_value: "{kind}" }} }}']
    if reference:
        lines.append(f'  {{ key: "drift_reference", value: {{ string_value: "{reference}" }} }}')
    return ",\n".join(lines)
