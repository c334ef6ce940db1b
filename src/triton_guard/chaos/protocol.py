"""The chaos protocol: what a fault is and where the server keeps it.

- `Fault`: one validated fault (hang, error, slow, nan, drift, leak) and the
  parameters each kind uses (`PARAMS_BY_KIND`).
- `ChaosControl`: the active fault of each target model, one small JSON file
  per model in a directory every stub process of the server sees
  ($TRITON_GUARD_CHAOS_DIR), written atomically; `<model>.hooked` marks a
  model whose hook runs.

Both sides use it: the client command (chaos/command.py) and the in-model
hook (chaos/hook.py). No Triton import: unit-tested without a server.
"""

from __future__ import annotations

import enum
import json
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from triton_guard import defaults
from triton_guard.errors import FaultError


class FaultKind(str, enum.Enum):
    HANG = "hang"  # execute does not return until the fault changes
    ERROR = "error"  # every execute fails
    SLOW = "slow"  # every execute takes slow_ms longer
    NAN = "nan"  # outputs are NaN
    DRIFT = "drift"  # answers from perturbed weights
    LEAK = "leak"  # held memory grows at leak_mb_per_s up to leak_cap_mb


# The parameters each kind uses; a command carries only these.
PARAMS_BY_KIND: dict[FaultKind, tuple[str, ...]] = {
    FaultKind.HANG: (),
    FaultKind.ERROR: (),
    FaultKind.SLOW: ("slow_ms",),
    FaultKind.NAN: (),
    FaultKind.DRIFT: ("drift_scale", "seed"),
    FaultKind.LEAK: ("leak_mb_per_s", "leak_cap_mb", "instance"),
}
FAULT_NAMES = tuple(k.value for k in FaultKind)


def _number(name: str, value: Any, *, integer: bool = False, minimum: float = 0.0, inclusive: bool = False):
    # bool is an int in Python, and "500" from a hand-written command is not a number.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise FaultError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise FaultError(f"{name} must be {bound}, got {value!r}")
    return value


@dataclass(frozen=True)
class Fault:
    """One fault. Parameters a kind does not use are kept but ignored."""

    kind: FaultKind
    slow_ms: int = defaults.CHAOS_SLOW_MS
    leak_mb_per_s: float = defaults.CHAOS_LEAK_MB_PER_S
    leak_cap_mb: float = defaults.CHAOS_LEAK_CAP_MB
    drift_scale: float = defaults.CHAOS_DRIFT_SCALE
    seed: int = defaults.CHAOS_DRIFT_SEED
    # leak: only in the instance with this index (the N of Triton's <model>_<group>_N); None: every instance.
    instance: int | None = None
    set_at: float = 0.0  # wall-clock time the server accepted it; re-injecting restarts a leak

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", FaultKind(self.kind))
        except ValueError:
            raise FaultError(f"unknown fault {self.kind!r}: expected one of {', '.join(FAULT_NAMES)}") from None
        _number("slow_ms", self.slow_ms, integer=True)
        _number("leak_mb_per_s", self.leak_mb_per_s)
        _number("leak_cap_mb", self.leak_cap_mb)
        _number("drift_scale", self.drift_scale)
        _number("seed", self.seed, integer=True, inclusive=True)
        if self.instance is not None:
            _number("instance", self.instance, integer=True, inclusive=True)
        _number("set_at", self.set_at, inclusive=True)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": self.kind.value}

    @classmethod
    def from_dict(cls, data: Any) -> "Fault":
        if not isinstance(data, dict):
            raise FaultError(f"a fault is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise FaultError(f"unknown fault parameter(s): {', '.join(unknown)}")
        if "kind" not in data:
            raise FaultError("a fault needs a 'kind'")
        return cls(**data)

    def describe(self) -> str:
        """One line for a person."""
        details = {
            FaultKind.HANG: "execute blocks until cleared",
            FaultKind.ERROR: "every execute fails",
            FaultKind.SLOW: f"+{self.slow_ms} ms per execute",
            FaultKind.NAN: "outputs are NaN",
            FaultKind.DRIFT: f"weights perturbed, scale {self.drift_scale:g}, seed {self.seed}",
            FaultKind.LEAK: f"+{self.leak_mb_per_s:g} MB/s held, up to {self.leak_cap_mb:g} MB per instance"
            + ("" if self.instance is None else f", in instance {self.instance} only (<model>_<group>_{self.instance})"),
        }
        return f"{self.kind.value} ({details[self.kind]})"


def check_model_name(model: Any) -> str:
    # The name becomes a file name in the control directory.
    if not isinstance(model, str) or not model.strip():
        raise FaultError(f"the target model name must be a non-empty string, got {model!r}")
    if "/" in model or "\0" in model or model.startswith("."):
        raise FaultError(f"invalid model name {model!r}")
    return model


class ChaosControl:
    """The active fault per target model: `<directory>/<model>.json`.

    Writers replace the file atomically (tmp + os.replace), so a reader sees
    the old fault or the new one, never half a file. Reads parse only when
    the bytes changed. `<model>.hooked` marks a model whose hook is running.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._parsed: dict[str, tuple[bytes, Fault]] = {}

    def _path(self, model: str, suffix: str) -> Path:
        return self.directory / f"{check_model_name(model)}{suffix}"

    def write(self, model: str, fault: Fault) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self._path(model, ".json")
        # One tmp name per writer thread: concurrent writers never share it.
        tmp = self.directory / f".{model}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(fault.to_dict()))
        os.replace(tmp, target)

    def read(self, model: str) -> Fault | None:
        try:
            raw = self._path(model, ".json").read_bytes()
        except FileNotFoundError:
            return None
        cached = self._parsed.get(model)
        if cached is not None and cached[0] == raw:
            return cached[1]
        try:
            fault = Fault.from_dict(json.loads(raw))
        except ValueError as exc:  # FaultError and JSONDecodeError are ValueErrors
            raise FaultError(f"chaos control file for model '{model}' is invalid: {exc}") from None
        self._parsed[model] = (raw, fault)
        return fault

    def clear(self, model: str) -> Fault | None:
        """Remove the model's fault; returns the one that was active."""
        try:
            previous = self.read(model)
        except FaultError:
            previous = None  # an unreadable file is cleared all the same
        self._path(model, ".json").unlink(missing_ok=True)
        return previous

    def register(self, model: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._path(model, ".hooked").touch()

    def hooked_models(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.name[: -len(".hooked")] for p in self.directory.glob("*.hooked"))
