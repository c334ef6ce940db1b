"""Golden inference: fixed inputs, outputs recorded once, compared two ways.

* an exact hash of the outputs (bit-exact: same model, same numerics);
* a tolerance comparison (identical labels, max |dPROBS| <= tolerance).

A GPU's rounding differs from a CPU's, and even one device's may differ with
the batch a request was merged into, so the hash alone would cry wolf: the
tolerance decides, the hash says whether the answer was bit-identical.
Goldens are kept per device class (`goldens/cpu.json`, `goldens/gpu.json`) by
scripts/make_goldens.py, which records the environment they were made in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GOLDENS_DIR = "goldens"  # inside the canary model's directory


def output_hash(labels: np.ndarray, probs: np.ndarray) -> str:
    """sha256 over the little-endian bytes of LABEL (int64) then PROBS (float32)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(probs, dtype="<f4").tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Golden:
    device_class: str
    images: np.ndarray  # uint8 [N, 8, 8]
    labels: np.ndarray  # int64 [N, 1]
    probs: np.ndarray  # float32 [N, 10]
    sha256: str
    tolerance: float
    environment: dict

    @classmethod
    def load(cls, path: Path) -> "Golden":
        data = json.loads(Path(path).read_text())
        golden = cls(
            device_class=data["device_class"],
            images=np.array(data["images"], dtype=np.uint8),
            labels=np.array(data["labels"], dtype=np.int64),
            # float32 written as hex floats: exact round trip through JSON.
            probs=np.array([[float.fromhex(v) for v in row] for row in data["probs"]], dtype=np.float32),
            sha256=data["sha256"],
            tolerance=float(data["tolerance"]),
            environment=data.get("environment", {}),
        )
        if output_hash(golden.labels, golden.probs) != golden.sha256:
            raise ValueError(f"{path}: sha256 does not match the outputs stored beside it")
        return golden

    def to_json(self) -> str:
        return json.dumps(
            {
                "device_class": self.device_class,
                "sha256": self.sha256,
                "tolerance": self.tolerance,
                "environment": self.environment,
                "images": self.images.tolist(),
                "labels": self.labels.tolist(),
                "probs": [[float(v).hex() for v in row] for row in self.probs],
            },
            indent=1,
        )


@dataclass(frozen=True)
class GoldenComparison:
    bit_exact: bool
    labels_match: bool
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.labels_match and self.max_abs_diff <= self.tolerance

    @property
    def reason(self) -> str:
        if self.bit_exact:
            return "bit-exact"
        if not np.isfinite(self.max_abs_diff):
            return "outputs are not finite (NaN or inf)"
        if not self.labels_match:
            return f"labels differ from the golden (max |dPROBS| {self.max_abs_diff:.3g})"
        if self.max_abs_diff > self.tolerance:
            return f"max |dPROBS| {self.max_abs_diff:.3g} exceeds tolerance {self.tolerance:g}"
        return f"within tolerance, not bit-exact (max |dPROBS| {self.max_abs_diff:.3g})"


def compare(golden: Golden, labels: np.ndarray, probs: np.ndarray) -> GoldenComparison:
    labels = np.asarray(labels, dtype=np.int64).reshape(golden.labels.shape)
    probs = np.asarray(probs, dtype=np.float32).reshape(golden.probs.shape)
    diff = np.abs(probs.astype(np.float64) - golden.probs.astype(np.float64))
    max_abs = float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf")
    return GoldenComparison(
        bit_exact=output_hash(labels, probs) == golden.sha256,
        labels_match=bool(np.array_equal(labels, golden.labels)),
        max_abs_diff=max_abs,
        tolerance=golden.tolerance,
    )
