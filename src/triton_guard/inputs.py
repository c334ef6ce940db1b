"""Named input tensors from a file: a KServe v2 JSON inference request body, or an .npz.

The same files feed `triton-guard goldens record` and the drift reference
recorder: what `curl .../v2/models/MODEL/infer -d @FILE` takes (binary
tensor data is not supported: write `data` inline), or `numpy.savez` of
named arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from triton_guard.errors import InputsError
from triton_guard.jsonfile import read_json


def load_inputs(path: Path) -> dict[str, np.ndarray]:
    """{input name: array} from `path` (.npz, else KServe v2 JSON); InputsError when unusable."""
    path = Path(path)
    if path.suffix == ".npz":
        return _load_npz(path)
    return _load_kserve_json(path)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise InputsError(f"{path}: not a readable .npz of named arrays: {exc}") from None
    if not arrays:
        raise InputsError(f"{path}: the .npz holds no array")
    return {name: _as_request_array(path, name, a) for name, a in arrays.items()}


def _as_request_array(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    """An .npz array as a request carries it, or InputsError when Triton has no datatype for it."""
    if array.dtype.kind in "US":  # numpy saves text as fixed-width unicode/bytes; BYTES wants objects of bytes
        return _as_bytes_objects(array)
    native = array.astype(array.dtype.newbyteorder("="), copy=False)  # tritonclient refuses big-endian arrays
    if np_to_triton_dtype(native.dtype) is None:
        raise InputsError(f"{path}: array '{name}' is {array.dtype}, which no Triton datatype carries "
                          "(BOOL, INT8-64, UINT8-64, FP16/32/64, or text for BYTES)")
    return native


def _as_bytes_objects(array: np.ndarray) -> np.ndarray:
    flat = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.reshape(-1).tolist()]
    return np.array(flat, dtype=np.object_).reshape(array.shape)


def _load_kserve_json(path: Path) -> dict[str, np.ndarray]:
    return kserve_body_inputs(read_json(path, InputsError, str(path)), str(path))


def kserve_body_inputs(body: object, source: str = "request body") -> dict[str, np.ndarray]:
    """{input name: array} from a parsed KServe v2 request body; InputsError (naming `source`) when unusable."""
    tensors = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(tensors, list) or not tensors:
        raise InputsError(f'{source}: expected a KServe v2 request body {{"inputs": [{{"name", "shape", "datatype", "data"}}, ...]}}')
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        arrays.update([_tensor(source, index, tensor)])
    return arrays


def _tensor(path: Path | str, index: int, tensor: object) -> tuple[str, np.ndarray]:
    if not isinstance(tensor, dict):
        raise InputsError(f"{path}: inputs[{index}] is not an object")
    missing = [key for key in ("name", "shape", "datatype", "data") if key not in tensor]
    name = tensor.get("name", f"inputs[{index}]")
    if missing:
        raise InputsError(f"{path}: input '{name}' lacks {', '.join(missing)}")
    datatype = str(tensor["datatype"]).upper()
    try:
        dtype = triton_to_np_dtype(datatype)
    except Exception:  # tritonclient raises a bare Exception for unknown names
        dtype = None
    if dtype is None:
        raise InputsError(f"{path}: input '{name}': unknown datatype '{tensor['datatype']}'")
    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InputsError(f"{path}: input '{name}': shape must be a list of non-negative integers, got {shape!r}")
    data = np.asarray(tensor["data"], dtype=object).reshape(-1)
    if data.size != int(np.prod(shape)):
        raise InputsError(f"{path}: input '{name}': shape {shape} holds {int(np.prod(shape))} values, data has {data.size}")
    try:
        if datatype == "BYTES":
            array = _as_bytes_objects(data)
        else:
            array = np.array(data.tolist(), dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InputsError(f"{path}: input '{name}': data is not {datatype}: {exc}") from None
    return name, array.reshape(shape)


def triton_datatype(array: np.ndarray) -> str:
    """Triton's datatype name for an array (BYTES for objects)."""
    return np_to_triton_dtype(array.dtype)
