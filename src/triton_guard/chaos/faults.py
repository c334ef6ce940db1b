"""Fault injection for a server started with `triton-guard serve --chaos`.

- `Fault`: one validated fault (hang, error, slow, nan, drift, leak).
- `ChaosCommand`: what `triton-guard chaos` sends to the `chaos` control
  model (JSON), parsed and validated on both sides with the same code.
- `ChaosControl`: the active fault of each target model, one small JSON file
  per model in a directory every stub process of the server sees
  ($TRITON_GUARD_CHAOS_DIR), written atomically.
- `ChaosHook`: used inside a target model's `execute`; applies the fault.
  Its watcher thread grows (and on clear releases) the leak.
- `hook_from_environment`: a started hook only in chaos mode, else None: a
  target model then pays one `is not None` check per execute, nothing else.

No Triton import: unit-tested without a server. The control model
(chaos/repository/chaos) and the classifier only translate.
"""

from __future__ import annotations

import enum
import json
import math
import mmap
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from triton_guard import defaults

MB = 1 << 20
# Leak chunks smaller than this wait for the next step (no 4 KB mappings).
LEAK_MIN_CHUNK_BYTES = 64 << 10


class FaultError(ValueError):
    """A fault or command that cannot be applied; the message says why."""


class FaultKind(str, enum.Enum):
    HANG = "hang"  # execute does not return until the fault changes
    ERROR = "error"  # every execute fails
    SLOW = "slow"  # every execute takes slow_ms longer
    NAN = "nan"  # outputs are NaN
    DRIFT = "drift"  # answers from perturbed weights
    LEAK = "leak"  # held memory grows at leak_mb_per_s up to leak_cap_mb


CLEAR = "clear"  # the command that removes a model's fault (not a fault itself)

# The parameters each kind uses; a command carries only these.
PARAMS_BY_KIND: dict[FaultKind, tuple[str, ...]] = {
    FaultKind.HANG: (),
    FaultKind.ERROR: (),
    FaultKind.SLOW: ("slow_ms",),
    FaultKind.NAN: (),
    FaultKind.DRIFT: ("drift_scale", "seed"),
    FaultKind.LEAK: ("leak_mb_per_s", "leak_cap_mb"),
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
            FaultKind.LEAK: f"+{self.leak_mb_per_s:g} MB/s held, up to {self.leak_cap_mb:g} MB per instance",
        }
        return f"{self.kind.value} ({details[self.kind]})"


def check_model_name(model: Any) -> str:
    # The name becomes a file name in the control directory.
    if not isinstance(model, str) or not model.strip():
        raise FaultError(f"the target model name must be a non-empty string, got {model!r}")
    if "/" in model or "\0" in model or model.startswith("."):
        raise FaultError(f"invalid model name {model!r}")
    return model


@dataclass(frozen=True)
class ChaosCommand:
    """Set `fault` on `model`; `fault=None` clears it."""

    model: str
    fault: Fault | None

    def __post_init__(self) -> None:
        check_model_name(self.model)

    @classmethod
    def build(cls, fault: str, model: str, **params: Any) -> "ChaosCommand":
        """From the CLI's words: `fault` is a fault name or 'clear'; unused params are dropped."""
        if fault == CLEAR:
            return cls(model, None)
        try:
            kind = FaultKind(fault)
        except ValueError:
            raise FaultError(
                f"unknown fault {fault!r}: expected one of {', '.join(FAULT_NAMES)} or {CLEAR}"
            ) from None
        return cls(model, Fault(kind, **{k: v for k, v in params.items() if k in PARAMS_BY_KIND[kind]}))

    def to_json(self) -> str:
        if self.fault is None:
            return json.dumps({"model": self.model, "fault": CLEAR})
        params = {k: getattr(self.fault, k) for k in PARAMS_BY_KIND[self.fault.kind]}
        return json.dumps({"model": self.model, "fault": self.fault.kind.value, **params})

    @classmethod
    def from_json(cls, text: str | bytes, set_at: float = 0.0) -> "ChaosCommand":
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise FaultError(f"the command is not JSON: {exc}") from None
        if not isinstance(data, dict) or "fault" not in data or "model" not in data:
            raise FaultError('the command is a JSON object {"fault": ..., "model": ..., parameters}')
        name, model = data.pop("fault"), data.pop("model")
        if name == CLEAR:
            if data:
                raise FaultError(f"clear takes no parameters, got {', '.join(sorted(data))}")
            return cls(model, None)
        try:
            kind = FaultKind(name)
        except ValueError:
            raise FaultError(f"unknown fault {name!r}: expected one of {', '.join(FAULT_NAMES)} or {CLEAR}") from None
        unused = sorted(set(data) - set(PARAMS_BY_KIND[kind]))
        if unused:
            allowed = ", ".join(PARAMS_BY_KIND[kind]) or "none"
            raise FaultError(f"fault {name} takes no parameter(s) {', '.join(unused)} (it takes: {allowed})")
        return cls(model, Fault(kind, set_at=set_at, **data))


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


def allocate_host(nbytes: int) -> np.ndarray:
    """`nbytes` of touched host memory in a mapping of its own.

    An anonymous mmap, not np.ones: after glibc frees one large chunk it
    raises its mmap threshold and serves the next ones from a heap, which a
    non-main thread's arena keeps after free, so RSS would not drop on clear
    (measured). The array's base is the mapping: dropping it unmaps.
    """
    chunk = np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.uint8)
    chunk.fill(1)  # touch every page: resident memory really grows
    return chunk


class Leak:
    """Memory held on purpose: `rate` bytes per second since `started_at`, up to the cap."""

    def __init__(self, fault: Fault, allocate: Callable[[int], Any], started_at: float) -> None:
        self.fault = fault
        self._allocate = allocate
        self._started_at = started_at
        self._rate = fault.leak_mb_per_s * MB
        self._cap = int(fault.leak_cap_mb * MB)
        self._chunks: list[Any] = []
        self.held_bytes = 0

    def grow(self, now: float) -> int:
        """Allocate what is due by `now`; returns the bytes held."""
        target = min(self._cap, round(self._rate * max(0.0, now - self._started_at)))
        due = target - self.held_bytes
        if due >= LEAK_MIN_CHUNK_BYTES or (due > 0 and target == self._cap):
            self._chunks.append(self._allocate(due))
            self.held_bytes = target
        return self.held_bytes

    def release(self) -> None:
        self._chunks.clear()
        self.held_bytes = 0


@dataclass
class ChaosHook:
    """A target model's side of fault injection (one per model instance).

    `before()` at the start of execute: blocks on hang, sleeps on slow, and
    returns the active fault (None: none). The model answers an ERROR fault
    with `error_message`, runs DRIFT on `perturbed_weights`, and passes its
    outputs through `after_outputs`. `start()` runs the watcher thread that
    grows and releases the leak, whether requests come or not.
    `allocate(nbytes)` makes leaked memory (host by default; a GPU instance
    passes a device allocator), `release()` runs after a leak is dropped
    (a GPU instance empties torch's cache there).
    """

    control: ChaosControl
    model_name: str
    allocate: Callable[[int], Any] = allocate_host
    release: Callable[[], None] | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    hang_poll_s: float = defaults.CHAOS_HANG_POLL_S
    watch_s: float = defaults.CHAOS_WATCH_S

    _leak: Leak | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _watcher: threading.Thread | None = field(default=None, init=False)
    _last_watch_error: str | None = field(default=None, init=False)

    @property
    def error_message(self) -> str:
        return f"chaos: injected error in model '{self.model_name}'"

    def before(self) -> Fault | None:
        fault = self.control.read(self.model_name)
        while fault is not None and fault.kind is FaultKind.HANG:
            self.sleep(self.hang_poll_s)
            fault = self.control.read(self.model_name)
        if fault is not None and fault.kind is FaultKind.SLOW:
            self.sleep(fault.slow_ms / 1000)
        return fault

    def after_outputs(self, fault: Fault | None, outputs: np.ndarray) -> np.ndarray:
        if fault is not None and fault.kind is FaultKind.NAN and np.issubdtype(outputs.dtype, np.floating):
            return np.full_like(outputs, np.nan)
        return outputs

    @property
    def leaked_bytes(self) -> int:
        leak = self._leak
        return leak.held_bytes if leak is not None else 0

    def sync(self) -> None:
        """One watcher step: start, grow or release the leak to match the control file."""
        fault = self.control.read(self.model_name)
        if fault is not None and fault.kind is FaultKind.LEAK:
            if self._leak is None or self._leak.fault != fault:
                self._drop_leak()  # a new leak (other parameters, or re-injected) starts from zero
                self._leak = Leak(fault, self.allocate, self.clock())
            self._leak.grow(self.clock())
        elif self._leak is not None:
            self._drop_leak()

    def _drop_leak(self) -> None:
        if self._leak is None:
            return
        self._leak.release()
        self._leak = None
        if self.release is not None:
            self.release()

    def start(self) -> "ChaosHook":
        self._watcher = threading.Thread(target=self._watch, name=f"chaos-{self.model_name}", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_s):
            try:
                self.sync()
                self._last_watch_error = None
            except Exception as exc:  # e.g. out of memory: keep what is held, retry next step
                message = f"chaos: model '{self.model_name}': {type(exc).__name__}: {exc}"
                if message != self._last_watch_error:  # once per distinct failure, not every step
                    print(message, file=sys.stderr, flush=True)
                    self._last_watch_error = message

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5 * self.watch_s + 1)
        self._drop_leak()


def perturbed_weights(
    weights: Mapping[str, np.ndarray], scale: float, seed: int
) -> dict[str, np.ndarray]:
    """Each tensor plus Gaussian noise with std = scale x the tensor's std.

    Relative to each tensor so a bias and a weight matrix drift alike;
    tensors are visited in name order so a seed always gives the same result.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for name in sorted(weights):
        values = np.asarray(weights[name])
        noise = rng.standard_normal(values.shape) * (scale * float(values.std()))
        result[name] = (values + noise).astype(values.dtype)
    return result


def hook_from_environment(
    model_name: str,
    allocate: Callable[[int], Any] | None = None,
    release: Callable[[], None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ChaosHook | None:
    """A started hook when the server runs with --chaos, else None."""
    directory = (os.environ if environ is None else environ).get(defaults.CHAOS_DIR_ENV)
    if not directory:
        return None
    control = ChaosControl(directory)
    control.register(model_name)
    return ChaosHook(control, model_name, allocate=allocate or allocate_host, release=release).start()


__all__ = [
    "CLEAR",
    "ChaosCommand",
    "ChaosControl",
    "ChaosHook",
    "Fault",
    "FaultError",
    "FaultKind",
    "Leak",
    "allocate_host",
    "hook_from_environment",
    "perturbed_weights",
]
