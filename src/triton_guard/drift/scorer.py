"""Scoring one monitored model's window beside the request path.

Every guard instance that monitors a model owns a `Scorer`; only the one
holding the model's scorer lock (an `flock` the kernel drops when its process
dies) scores and writes the state, so a server has one verdict per model
however many instances feed the window. `step()` is one pass, called every
DRIFT_EVALUATE_S by the Triton adapter's thread (triton_guard.backends.drift_tap)
or directly by tests with an injected clock.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from triton_guard.drift import state as drift_state
from triton_guard.drift.monitor import DriftMonitor, DriftScores
from triton_guard.guard.recovery import try_flock


class ScorerLock:
    """Non-blocking, process-wide election of one scorer per model."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is None:
            self._fd = try_flock(self.path)
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class Scorer:
    def __init__(self, model: str, output: str, monitor: DriftMonitor, state_dir: str,
                 thresholds: dict | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self.output = output
        self.monitor = monitor
        self.state_dir = state_dir
        self.thresholds = thresholds or {}
        self.clock = clock
        self.lock = ScorerLock(os.path.join(state_dir, drift_state.file_stem(model) + drift_state.SCORER_LOCK_SUFFIX))
        self.scores: DriftScores | None = None
        self._scored_total = -1

    def step(self) -> DriftScores | None:
        """Score (when new answers arrived) and rewrite the state; None unless this process is the scorer."""
        if not self.lock.try_acquire():
            return None
        rows, total = self.monitor.ring.snapshot()
        if self.scores is None or total != self._scored_total:
            self.scores = self.monitor.reference.score(rows, self.monitor.window_size, **self.thresholds)
            self._scored_total = total
        drift_state.write_state(self.state_dir, self.model, {
            "output": self.output,
            "kind": self.monitor.reference.kind,
            "updated_at": self.clock(),
            "observed_total": total,
            "probe_rows_skipped": self.monitor.ring.skipped(),
            "scores": self.scores.to_dict(),
        })
        return self.scores

    def close(self) -> None:
        self.lock.release()


def write_off_state(state_dir: str, model: str, output: str, error: str, clock: Callable[[], float] = time.monotonic) -> None:
    """A monitor that could not start says so where the canary looks."""
    drift_state.write_state(state_dir, model, {"output": output, "updated_at": clock(), "error": error})
