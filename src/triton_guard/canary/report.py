"""The canary's report: `CheckResult` (one check's verdict) and `CanaryReport`, JSON out and in.

The canary model answers a probe with `CanaryReport.to_json()` (standard
JSON: a NaN or inf measurement is written as null); `triton-guard probe` and
`status` read it back with `CanaryReport.from_dict`. `ready` is the AND of
all checks. Plain Python (no Triton import).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    value: Any
    limit: Any
    reason: str


@dataclass
class CanaryReport:
    checks: list[CheckResult]
    duration_s: float
    device_class: str
    at: float = field(default_factory=time.time)  # wall clock, for people
    notes: list[str] = field(default_factory=list)  # what a passing report should still say
    metrics_url: str | None = None  # the server's /metrics as the canary reaches it

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict:
        return {
            "ready": self.ready,
            "at": self.at,
            "duration_s": self.duration_s,
            "device_class": self.device_class,
            "notes": list(self.notes),
            "metrics_url": self.metrics_url,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    def to_json(self) -> str:
        """Standard JSON (jq, Go, JavaScript): a NaN or inf measurement is written as null."""
        return json.dumps(_finite(self.to_dict()), default=str, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "CanaryReport":
        return cls(
            checks=[CheckResult(**c) for c in data["checks"]],
            duration_s=data["duration_s"],
            device_class=data["device_class"],
            at=data["at"],
            notes=list(data.get("notes") or []),
            metrics_url=data.get("metrics_url"),
        )


def _finite(value):
    """`value` with every non-finite float (NaN, inf, numpy's too) replaced by None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
