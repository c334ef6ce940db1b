"""Goldens: fixed inputs to one model and the outputs it must give, as data.

A golden case is one file beside the model it checks,
`<repository>/<model>/goldens/<case>.golden.json`, so a new model version and
its goldens are reviewed together. It holds:

* `inputs`: a KServe v2 inference request body (named tensors of any
  datatype, BYTES included, any shape, batched or not: exactly what the model
  is sent; `curl .../v2/models/<model>/infer -d` takes the same tensors);
* `expected`, per device class (`cpu`, `gpu`): each output's datatype, shape,
  values and tolerance, and a sha256 over all of them (bit-exact or not).

Floating-point outputs pass within their tolerance (|answer - golden| <=
tolerance * max(1, |golden|)): a GPU rounds differently from a CPU, and one
device may round differently with the batch a request was merged into.
Integer, BOOL and BYTES outputs must be identical. The hash only says whether
the answer was bit-for-bit the recorded one.

Values are written as JSON numbers: a float32 or float16 widened to a Python
float and printed by repr() reads back to the same bits. BYTES elements are
UTF-8 strings, or {"base64": ...} when they are not text.
`triton-guard goldens record` writes these files (`record_case_file`); the
canary's golden store (canary/golden_store.py) reads them and its golden
verdict (canary/golden_check.py) compares answers with them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from triton_guard.errors import GoldenError

GOLDENS_DIR = "goldens"  # inside the checked model's directory
GOLDEN_SUFFIX = ".golden.json"
DEVICE_CLASSES = ("cpu", "gpu")
FORMAT_VERSION = 1

FLOAT_TYPES = ("FP16", "FP32", "FP64")


# --- tensors <-> JSON -------------------------------------------------------------


def datatype_of(array: np.ndarray) -> str:
    """Triton's datatype name (BYTES for object or text arrays)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = np_to_triton_dtype(array.dtype.newbyteorder("="))
    if name is None:
        raise GoldenError(f"numpy dtype {array.dtype} has no Triton datatype")
    return name


def _bytes_element(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.bytes_):
        return bytes(value)
    raise GoldenError(f"BYTES element {value!r} is neither bytes nor text")


def canonical(array: np.ndarray, datatype: str | None = None) -> np.ndarray:
    """The array as Triton hands it over: BYTES as objects of bytes, numbers as their own dtype."""
    array = np.asarray(array)
    datatype = datatype or datatype_of(array)
    if datatype == "BYTES":
        flat = [_bytes_element(v) for v in array.reshape(-1).tolist()] if array.size else []
        return np.array(flat, dtype=np.object_).reshape(array.shape)
    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        raise GoldenError(f"datatype {datatype} is not supported")
    return np.asarray(array, dtype=dtype)


def tensor_to_json(name: str, array: np.ndarray) -> dict:
    """One KServe v2 tensor {"name", "datatype", "shape", "data"} (data flattened, row-major)."""
    datatype = datatype_of(array)
    array = canonical(array, datatype)
    flat = array.reshape(-1)
    if datatype == "BYTES":
        data = []
        for value in flat.tolist():
            try:
                data.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                data.append({"base64": base64.b64encode(value).decode("ascii")})
    elif datatype in FLOAT_TYPES:
        if not np.all(np.isfinite(flat)):
            raise GoldenError(f"tensor '{name}' holds NaN or inf: not representable as a golden")
        data = [float(v) for v in flat.tolist()]
    elif datatype == "BOOL":
        data = [bool(v) for v in flat.tolist()]
    else:
        data = [int(v) for v in flat.tolist()]
    return {"name": name, "datatype": datatype, "shape": [int(d) for d in array.shape], "data": data}


def tensor_from_json(tensor: Mapping[str, Any], where: str) -> tuple[str, np.ndarray]:
    try:
        name, datatype, shape, data = tensor["name"], str(tensor["datatype"]).upper(), tensor["shape"], tensor["data"]
    except (KeyError, TypeError):
        raise GoldenError(f"{where}: a tensor needs name, datatype, shape and data") from None
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise GoldenError(f"{where}: tensor '{name}': bad shape {shape!r}")
    if not isinstance(data, list) or len(data) != math.prod(shape):
        raise GoldenError(f"{where}: tensor '{name}': shape {shape} needs {math.prod(shape)} values")
    if datatype == "BYTES":
        values = []
        for value in data:
            if isinstance(value, dict) and "base64" in value:
                values.append(base64.b64decode(value["base64"]))
            elif isinstance(value, str):
                values.append(value.encode("utf-8"))
            else:
                raise GoldenError(f"{where}: tensor '{name}': BYTES value {value!r} is not text or base64")
        return name, np.array(values, dtype=np.object_).reshape(shape)
    dtype = triton_to_np_dtype(datatype) if datatype != "BYTES" else None
    if dtype is None:
        raise GoldenError(f"{where}: tensor '{name}': unknown datatype {datatype!r}")
    try:
        return name, np.array(data, dtype=dtype).reshape(shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise GoldenError(f"{where}: tensor '{name}': data is not {datatype}: {exc}") from None


def outputs_hash(outputs: Mapping[str, np.ndarray]) -> str:
    """sha256 over every output, by name: name, datatype, shape, then its values.

    Numbers as little-endian bytes of their own dtype; BYTES as Triton
    serialises them (each element a 4-byte little-endian length, then its bytes).
    """
    digest = hashlib.sha256()
    for name in sorted(outputs):
        array = np.asarray(outputs[name])
        datatype = datatype_of(array)
        array = canonical(array, datatype)
        digest.update(name.encode() + b"\0" + datatype.encode() + b"\0")
        digest.update(struct.pack(f"<{array.ndim}q", *array.shape))
        if datatype == "BYTES":
            for value in array.reshape(-1).tolist():
                digest.update(struct.pack("<I", len(value)) + value)
        else:
            digest.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def position_of(shape: tuple[int, ...], flat_index: int) -> list[int]:
    """The index of element `flat_index` (row-major) in an array of `shape`."""
    return [int(i) for i in np.unravel_index(flat_index, shape)] if shape else []


# --- a golden case ---------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedOutput:
    name: str
    value: np.ndarray
    tolerance: float  # 0 for integer, BOOL and BYTES outputs: exact

    @property
    def datatype(self) -> str:
        return datatype_of(self.value)


@dataclass(frozen=True)
class Expected:
    """What one device class answers."""

    outputs: dict[str, ExpectedOutput]
    sha256: str
    environment: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GoldenCase:
    model: str
    name: str
    inputs: dict[str, np.ndarray]
    expected: dict[str, Expected]  # by device class

    def to_json(self) -> str:
        body = {
            "format": FORMAT_VERSION,
            "model": self.model,
            "case": self.name,
            "inputs": [tensor_to_json(n, a) for n, a in self.inputs.items()],
            "expected": {
                device: {
                    "sha256": e.sha256,
                    "environment": e.environment,
                    "outputs": [
                        {**tensor_to_json(o.name, o.value), "tolerance": o.tolerance} for o in e.outputs.values()
                    ],
                }
                for device, e in sorted(self.expected.items())
            },
        }
        return _dumps_with_flat_data(body)

    @classmethod
    def from_json(cls, text: str, where: str) -> "GoldenCase":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise GoldenError(f"{where}: not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise GoldenError(f"{where}: not a golden case (format {FORMAT_VERSION})")
        try:
            model, name, inputs, expected = data["model"], data["case"], data["inputs"], data["expected"]
        except KeyError as exc:
            raise GoldenError(f"{where}: lacks {exc.args[0]!r}") from None
        if not isinstance(inputs, list) or not inputs:
            raise GoldenError(f"{where}: 'inputs' must list at least one tensor")
        if not isinstance(expected, dict) or not expected:
            raise GoldenError(f"{where}: 'expected' holds no device class")
        tensors = dict(tensor_from_json(t, where) for t in inputs)
        by_device = {}
        for device, entry in expected.items():
            if device not in DEVICE_CLASSES:
                raise GoldenError(f"{where}: unknown device class {device!r} (expected cpu or gpu)")
            outputs = {}
            for tensor in entry.get("outputs") or []:
                out_name, value = tensor_from_json(tensor, where)
                tolerance = float(tensor.get("tolerance", 0.0))
                if not (math.isfinite(tolerance) and tolerance >= 0):
                    raise GoldenError(f"{where}: output '{out_name}': tolerance {tolerance!r} must be >= 0")
                outputs[out_name] = ExpectedOutput(out_name, value, tolerance if datatype_of(value) in FLOAT_TYPES else 0.0)
            if not outputs:
                raise GoldenError(f"{where}: {device}: no expected output")
            sha = entry.get("sha256")
            if outputs_hash({n: o.value for n, o in outputs.items()}) != sha:
                raise GoldenError(f"{where}: {device}: sha256 does not match the outputs stored beside it")
            by_device[device] = Expected(outputs, sha, entry.get("environment") or {})
        return cls(str(model), str(name), tensors, by_device)

    @classmethod
    def load(cls, path: Path) -> "GoldenCase":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise GoldenError(f"{path}: {exc.strerror}") from None
        return cls.from_json(text, str(path))


def _dumps_with_flat_data(body: dict) -> str:
    """Indented JSON with each tensor's shape and data on one line (a reviewable diff, not 1 number a line)."""
    flat: list[str] = []

    def placeholders(value):
        if isinstance(value, dict):
            return {k: (_token(flat, v) if k in ("data", "shape") else placeholders(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [placeholders(v) for v in value]
        return value

    text = json.dumps(placeholders(body), indent=1, ensure_ascii=False)
    for index, compact in enumerate(flat):
        text = text.replace(json.dumps(_TOKEN.format(index)), compact, 1)
    return text


_TOKEN = "\x00tensor {}\x00"  # NUL never occurs in names, so a token cannot collide with them


def _token(flat: list[str], value) -> str:
    flat.append(json.dumps(value, separators=(", ", ": "), ensure_ascii=False))
    return _TOKEN.format(len(flat) - 1)


def case_path(model_dir: Path, case: str) -> Path:
    return Path(model_dir) / GOLDENS_DIR / f"{case}{GOLDEN_SUFFIX}"


def case_files(model_dir: Path) -> list[Path]:
    folder = Path(model_dir) / GOLDENS_DIR
    return sorted(folder.glob(f"*{GOLDEN_SUFFIX}")) if folder.is_dir() else []


# --- recording ---------------------------------------------------------------------


def reproducibility_problem(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray]) -> str | None:
    """Why two answers to the same inputs are not the same answer, naming the output; None when identical."""
    for name in sorted(set(first) | set(second)):
        if name not in first or name not in second:
            return f"output '{name}' came in only one of the two answers"
        a, b = np.asarray(first[name]), np.asarray(second[name])
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"output '{name}': {a.dtype}{list(a.shape)} then {b.dtype}{list(b.shape)}"
        if outputs_hash({name: a}) == outputs_hash({name: b}):
            continue
        if a.dtype.kind == "f":
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(-1)
            if np.all(np.isfinite(diff)):
                worst = int(np.argmax(diff))
                return (f"output '{name}' differs between two calls by up to {diff[worst]:.3g} "
                        f"(at {position_of(a.shape, worst)})")
        flat_a, flat_b = canonical(a).reshape(-1).tolist(), canonical(b).reshape(-1).tolist()
        first_diff = next(i for i, (x, y) in enumerate(zip(flat_a, flat_b)) if not (x == y or (x != x and y != y)))
        return (f"output '{name}' differs between two calls at {position_of(a.shape, first_diff)}: "
                f"{flat_a[first_diff]!r} then {flat_b[first_diff]!r}")
    return None


def record_case(
    model: str,
    name: str,
    inputs: Mapping[str, np.ndarray],
    first: Mapping[str, np.ndarray],
    second: Mapping[str, np.ndarray],
    device_class: str,
    tolerances: Mapping[str, float],
    default_tolerance: float,
    environment: Mapping[str, Any],
    existing: GoldenCase | None = None,
) -> GoldenCase:
    """A golden case from two answers to the same inputs; GoldenError when they differ or are unusable.

    An existing case with the same inputs keeps its other device classes; with
    other inputs it is replaced (its expectations were for those inputs).
    """
    if device_class not in DEVICE_CLASSES:
        raise GoldenError(f"device class {device_class!r}: expected cpu or gpu")
    problem = reproducibility_problem(first, second)
    if problem:
        raise GoldenError(f"not reproducible: {problem}")
    unknown = sorted(set(tolerances) - set(first))
    if unknown:
        raise GoldenError(f"--tolerance names {', '.join(unknown)}, not outputs of '{model}' ({', '.join(sorted(first))})")
    outputs = {}
    for out_name in sorted(first):
        value = canonical(first[out_name])
        if datatype_of(value) in FLOAT_TYPES and not np.all(np.isfinite(value)):
            raise GoldenError(f"output '{out_name}' holds NaN or inf: a model answering that is not a golden")
        tolerance = float(tolerances.get(out_name, default_tolerance)) if datatype_of(value) in FLOAT_TYPES else 0.0
        outputs[out_name] = ExpectedOutput(out_name, value, tolerance)
    inputs = {n: canonical(a) for n, a in inputs.items()}
    for in_name, array in inputs.items():
        tensor_to_json(in_name, array)  # refuses NaN / inf inputs now, not at the canary
    expected = Expected(outputs, outputs_hash({n: o.value for n, o in outputs.items()}), dict(environment))
    kept = {}
    if existing is not None and existing.model == model and _same_inputs(existing.inputs, inputs):
        kept = {d: e for d, e in existing.expected.items() if d != device_class}
    return GoldenCase(model, name, inputs, {**kept, device_class: expected})


def record_case_file(model_dir: Path, name: str, inputs: Mapping[str, np.ndarray], first: Mapping[str, np.ndarray],
                     second: Mapping[str, np.ndarray], device_class: str, tolerances: Mapping[str, float],
                     default_tolerance: float, environment: Mapping[str, Any]) -> tuple[Path, GoldenCase]:
    """The case `record_case` makes of these answers for `<model_dir>/goldens/<name>.golden.json`, and that path.

    The file already there (if readable) is the existing case whose other
    device classes are kept; an unreadable one is replaced.
    """
    path = case_path(model_dir, name)
    try:
        existing = GoldenCase.load(path) if path.exists() else None
    except GoldenError:
        existing = None  # unreadable: replaced by this recording
    case = record_case(Path(model_dir).name, name, inputs, first, second, device_class,
                       tolerances, default_tolerance, environment, existing)
    return path, case


def _same_inputs(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return set(a) == set(b) and all(outputs_hash({n: a[n]}) == outputs_hash({n: b[n]}) for n in a)
