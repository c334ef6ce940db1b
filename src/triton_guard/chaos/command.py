"""The client side of fault injection: `ChaosCommand`, what `triton-guard chaos` sends.

A command sets one `Fault` (chaos/protocol.py) on one model, or clears it
(`CLEAR`). The CLI builds it from its words and sends its JSON to the `chaos`
control model (chaos/repository/chaos), which parses and validates it with
this same code before it writes the control file. No Triton import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from triton_guard.chaos.protocol import FAULT_NAMES, PARAMS_BY_KIND, Fault, FaultError, FaultKind, check_model_name

CLEAR = "clear"  # the command that removes a model's fault (not a fault itself)


def _fault_kind(name: Any) -> FaultKind:
    """The fault a command names; FaultError naming the choices (CLEAR included) when it names none."""
    try:
        return FaultKind(name)
    except ValueError:
        raise FaultError(f"unknown fault {name!r}: expected one of {', '.join(FAULT_NAMES)} or {CLEAR}") from None


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
        kind = _fault_kind(fault)
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
        kind = _fault_kind(name)
        unused = sorted(set(data) - set(PARAMS_BY_KIND[kind]))
        if unused:
            allowed = ", ".join(PARAMS_BY_KIND[kind]) or "none"
            raise FaultError(f"fault {name} takes no parameter(s) {', '.join(unused)} (it takes: {allowed})")
        return cls(model, Fault(kind, set_at=set_at, **data))


def instance_names(config: dict) -> list[str]:
    """The instance names Triton gives a model with this (served) config: <group name>_<n> per group.

    The served config names every group (<model>_<group index> unless the
    repository named it). A KIND_GPU group on several GPUs repeats its names
    on each GPU.
    """
    names = []
    for i, group in enumerate(config.get("instance_group") or [{"count": 1}]):
        group_name = group.get("name") or f"{config.get('name', 'model')}_{i}"
        names += [f"{group_name}_{n}" for n in range(int(group.get("count", 1)))]
    return names


def check_instance(index: int, model: str, config: dict) -> list[str]:
    """The instances `--instance index` leaks in (the N of <model>_<group>_N); FaultError if there is none."""
    names = instance_names(config)
    chosen = [name for name in names if name.rsplit("_", 1)[1] == str(index)]
    if not chosen:
        raise FaultError(
            f"model '{model}' has no instance {index}: its instances are {', '.join(names)} "
            f"(--instance takes the N of <model>_<group>_N, 0 to {max(int(n.rsplit('_', 1)[1]) for n in names)})"
        )
    return chosen
