"""The drift monitor inside Triton: fed by a pipeline step, scored beside it.

Import only inside a Triton Python model. The step that sees the pipeline's
PROBS (postprocess) calls `observe` per batch (ring-buffer copies, no
statistics); a thread scores the window every DRIFT_EVALUATE_S, publishes
gauges on Triton's /metrics and writes the scores to the server's state
directory, where the canary reads them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard import metrics as catalogue
from triton_guard.backends import metric_families
from triton_guard.drift.monitor import DriftMonitor, DriftScores, Reference
from triton_guard.guard.shared_state import default_state_dir, write_json_state


class TritonDriftMonitor:
    def __init__(self, reference_path: Path, window_size: int = defaults.DRIFT_WINDOW) -> None:
        self.monitor = DriftMonitor(Reference.load(reference_path), window_size)
        self._state_dir = default_state_dir()
        # Families must outlive their metrics: keep them on self.
        self._families = {
            "score": metric_families.family(catalogue.DRIFT_SCORE),
            "fill": metric_families.family(catalogue.DRIFT_WINDOW_FILL),
            "alarm": metric_families.family(catalogue.DRIFT_ALARM),
        }
        self._scores = {
            name: self._families["score"].Metric(labels={"statistic": name})
            for name in catalogue.DRIFT_SCORE.allowed("statistic")
        }
        self._fill = self._families["fill"].Metric(labels={})
        self._alarm = self._families["alarm"].Metric(labels={})
        # Nothing is published before the first answer: no stub-to-server call
        # from this thread while the model may still be starting up.
        self._last_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="drift-monitor", daemon=True)
        self._thread.start()

    def observe(self, probs) -> None:
        self.monitor.observe(probs)

    def _loop(self) -> None:
        while not self._stop.wait(defaults.DRIFT_EVALUATE_S):
            if self.monitor.observed_total == self._last_total:
                continue  # nothing new: the scores stand
            self._last_total = self.monitor.observed_total
            try:
                self.publish(self.monitor.evaluate())
            except Exception as exc:  # a bad window must not stop the monitor
                pb_utils.Logger.log_warn(f"drift monitor: {exc}")

    def publish(self, scores: DriftScores) -> None:
        self._scores["chi2_p"].set(scores.chi2_p)
        self._scores["ks_p"].set(scores.ks_p)
        self._scores["psi_entropy"].set(scores.psi_entropy)
        self._fill.set(scores.fill)
        self._alarm.set(1.0 if scores.alarm else 0.0)
        write_json_state(
            self._state_dir, defaults.DRIFT_STATE_FILE, {**scores.to_dict(), "observed_total": self.monitor.observed_total}
        )

    def close(self) -> None:
        self._stop.set()
