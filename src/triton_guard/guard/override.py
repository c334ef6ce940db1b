"""An operator's override of one breaker: the command, its checks, and what it does to the shared record.

`triton-guard breaker MODEL open|close|auto` (cli/breaker.py) sends an
`OverrideCommand` as JSON to the server's `guard_control` model
(backends/guard/control.py), which checks the API key and calls `apply`
on the server's state directory, where the breakers live. Plain Python: the
command's parsing and the breaker's part are unit-tested without Triton.

Modes (resilience4j's FORCED_OPEN and DISABLED, Polly's manual control):
  open   every call refused at once ("... was opened by an operator") until auto
  close  every call admitted, no outcome counted, until auto
  auto   the state machine again: from open through HALF_OPEN (one trial
         decides), from close CLOSED with a fresh window
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from triton_guard.errors import ConfigError, OverrideError
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.record import Override
from triton_guard.guard.store import PER_INSTANCE_SETTINGS

MODES = {"open": Override.FORCED_OPEN, "close": Override.FORCED_CLOSED, "auto": Override.AUTO}
DESCRIBED = {
    Override.FORCED_OPEN: "forced OPEN by an operator",
    Override.FORCED_CLOSED: "forced CLOSED by an operator",
    Override.AUTO: "automatic",
}


@dataclasses.dataclass(frozen=True)
class OverrideCommand:
    model: str  # the breaker's name: the guarded upstream (in-process: the model itself)
    mode: str  # open, close or auto
    key: str = dataclasses.field(default="", repr=False)  # the server's API key

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise OverrideError("a command names the model whose breaker it overrides")
        if self.mode not in MODES:
            raise OverrideError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not isinstance(self.key, str):
            raise OverrideError("the API key must be a string")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> OverrideCommand:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise OverrideError(f"the command is not JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) - {"model", "mode", "key"}:
            raise OverrideError('the command is a JSON object {"model": ..., "mode": ..., "key": ...}')
        try:
            return cls(**doc)
        except TypeError as exc:
            raise OverrideError(f"the command lacks a field: {exc}") from None


def claimed_config(claim: Mapping[str, Any] | None) -> GuardConfig:
    """The breaker's settings as its guards claimed them (the defaults when none has yet)."""
    settings = dict((claim or {}).get("settings") or {})
    try:
        return GuardConfig(**{k: v for k, v in settings.items() if k not in PER_INSTANCE_SETTINGS})
    except (ConfigError, TypeError):
        return GuardConfig()


def apply(command: OverrideCommand, store, known: list[str], claim: Mapping[str, Any] | None) -> dict[str, Any]:
    """Override breaker `command.model` in `store` (one of `known`); what it was and what it is now."""
    if command.model not in known:
        listed = ", ".join(repr(name) for name in known) or "none yet"
        raise OverrideError(f"this server has no breaker for model '{command.model}' (breakers: {listed})")
    breaker = CircuitBreaker(command.model, claimed_config(claim), store)
    before = breaker.snapshot()
    transition = breaker.force(MODES[command.mode])
    after = breaker.snapshot()
    return {
        "model": command.model,
        "override": after.override.name,
        "state": after.state.name,
        "previous_override": before.override.name,
        "previous_state": before.state.name,
        "transition": None if transition is None else transition.reason,
    }


def describe(result: Mapping[str, Any]) -> str:
    """One line for the operator: what the breaker is now, and what it was."""
    now = DESCRIBED[Override[result["override"]]]
    was = f"{result['previous_state']}, {DESCRIBED[Override[result['previous_override']]]}"
    return f"breaker for model '{result['model']}': {result['state']}, {now} (was {was})"
