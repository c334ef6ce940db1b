"""Per-model drift state: what each monitor last concluded, and how old that is.

Every monitored model has one small JSON document in the server's state
directory, `drift-<model>.json`, rewritten by its scorer every
DRIFT_EVALUATE_S (even when nothing new arrived: the time stamp is the
monitor's heartbeat; a monitor that is off rewrites its reason as often). Readers (the canary, `triton-guard status`) judge each
one with `judge`: a document older than `stale_s` is a dead monitor (its
model unloaded, its stub gone) and its last verdict no longer counts.

Time is CLOCK_MONOTONIC (`time.monotonic()`), one clock for every process of
a host, as the breaker files use.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping

from triton_guard import defaults
from triton_guard.guard.state_dir import read_json_state, write_json_state

STATE_PREFIX = "drift-"
STATE_SUFFIX = ".json"
RING_SUFFIX = ".ring"
SCORER_LOCK_SUFFIX = ".scorer"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def file_stem(model: str) -> str:
    """`drift-<model>`, made filename-safe (an altered name gets a hash so it stays unique)."""
    stem = _UNSAFE.sub("_", model)[:100]
    if stem != model:
        stem += "-" + hashlib.sha256(model.encode()).hexdigest()[:12]
    return STATE_PREFIX + stem


def state_filename(model: str) -> str:
    return file_stem(model) + STATE_SUFFIX


def write_state(directory: str, model: str, document: Mapping[str, Any]) -> None:
    write_json_state(directory, state_filename(model), {"model": model, **document})


def read_states(directory: str) -> dict[str, dict]:
    """{model: its latest document} for every monitor that wrote one in `directory`."""
    try:
        names = sorted(e.name for e in os.scandir(directory)
                       if e.name.startswith(STATE_PREFIX) and e.name.endswith(STATE_SUFFIX))
    except FileNotFoundError:
        return {}
    states = {}
    for name in names:
        document = read_json_state(directory, name)
        if isinstance(document, dict) and isinstance(document.get("model"), str):
            states[document["model"]] = document
    return states


@dataclass(frozen=True)
class ModelVerdict:
    model: str
    status: str  # "ok", "alarm", "filling", "off" (no usable monitor), "stale" (monitor silent)
    reason: str
    value: dict

    @property
    def alarm(self) -> bool:
        return self.status == "alarm"


def judge(model: str, document: Mapping[str, Any], now: float,
          stale_s: float = defaults.DRIFT_STALE_S) -> ModelVerdict:
    """One monitor's verdict as of `now`; an old document is reported, never counted."""
    scores = document.get("scores") or {}
    value = {
        "output": document.get("output"),
        "kind": document.get("kind"),
        "n": scores.get("n", 0),
        "window_size": scores.get("window_size"),
        "statistics": scores.get("statistics", {}),
        "alarm": bool(scores.get("alarm")),
        "observed_total": document.get("observed_total", 0),
        "probe_rows_skipped": document.get("probe_rows_skipped", 0),
        "age_s": None,
    }
    updated = document.get("updated_at")
    if isinstance(updated, (int, float)):
        value["age_s"] = round(max(now - updated, 0.0), 1)
    if value["age_s"] is None or value["age_s"] > stale_s:
        age = "never updated" if value["age_s"] is None else f"silent for {value['age_s']:.0f} s"
        return ModelVerdict(model, "stale", f"monitor {age} (limit {stale_s:g} s): its last verdict is not counted",
                            {**value, "alarm": False})
    if document.get("error"):
        return ModelVerdict(model, "off", f"monitor off: {document['error']}", {**value, "alarm": False})
    if value["alarm"]:
        return ModelVerdict(model, "alarm", "; ".join(scores.get("reasons", [])) or "drift alarm", value)
    window = f"{value['n']}/{value['window_size']} answers"
    if value["window_size"] and value["n"] < value["window_size"]:
        return ModelVerdict(model, "filling", f"no drift ({window}: no verdict before the window is full)", value)
    return ModelVerdict(model, "ok", f"no drift ({window})", value)
