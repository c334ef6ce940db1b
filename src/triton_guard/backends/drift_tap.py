"""The drift monitor inside Triton: fed where a guard sees its upstream's answers.

Import only inside a Triton Python model. A guard whose parameters name a
`drift_output` builds one `DriftTap` (triton_guard.backends.runtime does, for
every placement); after each upstream call it hands the tap the answers and
the requests they belong to: ONE call per batch (`observe` for one batch's
outputs, `observe_per_request` for the guard backend's per-request results), which copies the
monitored output's rows into the model's shared window (rows of requests
that carry the probe parameter, as the canary's golden requests do, are
left out). A thread scores the window every DRIFT_EVALUATE_S, writes the
model's state (triton_guard.drift.state) and publishes the gauges with a
`model` label.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard import metrics as catalogue
from triton_guard.backends.metrics import MetricsPublisher
from triton_guard.drift import state as drift_state
from triton_guard.drift.monitor import DriftMonitor, is_probe_parameters, load_reference
from triton_guard.drift.ring import RowRing
from triton_guard.drift.scorer import Scorer, write_off_state
from triton_guard.errors import DriftReferenceError
from triton_guard.guard.config import ConfigError, DriftConfig
from triton_guard.guard.state_dir import default_state_dir
from triton_guard.periodic import Periodic


def is_probe(request) -> bool:
    """True for a request that carries the probe parameter (the canary's golden requests)."""
    return is_probe_parameters(request.parameters())  # JSON text; "{}" for almost every request


class DriftTap:
    @classmethod
    def for_config(cls, upstream: str, config: DriftConfig, repository: Path | None) -> "DriftTap":
        """The tap of a guard's parsed drift settings (GuardSettings.drift).

        A relative reference needs the repository root (ConfigError without
        one: the guard's load fails naming it). A reference that is missing
        or does not fit leaves the monitor off, says so in the model's drift
        state (the canary reports it) and lets answers flow; the tap looks for
        it again every DRIFT_EVALUATE_S, so a reference recorded later takes
        effect without reloading the guard.
        """
        path = Path(config.reference)
        if not path.is_absolute():
            if repository is None:
                raise ConfigError(f"drift_reference={config.reference!r} is relative: give an absolute path "
                                  "(a library placement has no repository root to resolve it against)")
            path = Path(repository) / path
        return cls(upstream, config, path)

    def __init__(self, model: str, config: DriftConfig, reference_path: Path) -> None:
        self.model = model
        self.config = config
        self.reference_path = reference_path
        self.error: str | None = None
        self.monitor: DriftMonitor | None = None  # set once the reference is loaded
        self.scorer: Scorer | None = None
        self._state_dir = default_state_dir()
        self._served = False  # no stub-to-server call from the thread before a request was served
        self._warned_shape = False
        self.metrics = MetricsPublisher(model=model)
        self._load_reference()
        self._thread = Periodic(f"drift-{model}", defaults.DRIFT_EVALUATE_S, self._step,
                                report=pb_utils.Logger.log_warn)  # fmt: skip
        self._thread.start()

    def _load_reference(self) -> None:
        """Start monitoring once a usable reference exists (a new one is picked up without a reload)."""
        try:
            reference = load_reference(self.reference_path)
            if self.config.kind is not None and reference.kind != self.config.kind:
                raise DriftReferenceError(
                    f"drift_kind={self.config.kind!r} but {self.reference_path} is a '{reference.kind}' reference")
            batched = bool(json.loads(self.reference_path.read_text()).get("batched", True))
        except DriftReferenceError as exc:
            error = (f"{exc} (record one: triton-guard drift record --model {self.model} "
                     f"--output {self.config.output} ...)")
            if error != self.error:
                pb_utils.Logger.log_warn(f"drift monitor of '{self.model}' off: {error}")
            self.error = error
            write_off_state(self._state_dir, self.model, self.config.output, error)
            return
        width, window = reference.row_width, self.config.window
        ring_name = f"{drift_state.file_stem(self.model)}-{self.config.output}-{width}x{window}{drift_state.RING_SUFFIX}"
        monitor = DriftMonitor(reference, window, RowRing.shared(os.path.join(self._state_dir, ring_name), width, window))
        self.batched, self.width = batched, width
        self.scorer = Scorer(self.model, self.config.output, monitor, self._state_dir, self.config.thresholds())
        self.error = None
        self.monitor = monitor  # last: observe() starts copying from here on

    # --- the request path: one call per successful batch ------------------------

    def observe(self, outputs: Mapping[str, np.ndarray], requests: Sequence) -> None:
        """Copy the monitored output's rows of non-probe requests into the window."""
        self._served = True
        monitor = self.monitor
        if monitor is None:
            return
        output = outputs.get(self.config.output)
        if output is None or not self._fits(output):
            self._warn_shape(output)
            return
        probes = [is_probe(r) for r in requests]
        # Rows follow the requests' batch dimensions, in order (asked only for a mixed batch).
        batch_sizes = (lambda: [r.inputs()[0].shape()[0] for r in requests]) if self.batched else None
        if not monitor.observe_answers(output, probes, batch_sizes):
            self._warn_shape(output)

    def observe_per_request(self, values: Sequence[Mapping[str, np.ndarray] | None], requests: Sequence) -> None:
        """`observe` for one answer per request (`values[i]`: request i's outputs, None when it failed)."""
        self._served = True
        monitor = self.monitor
        if monitor is None:
            return
        name = self.config.output
        kept, probe_values = [], 0
        for value, request in zip(values, requests):
            array = None if value is None else value.get(name)
            if array is None:
                continue
            if is_probe(request):
                probe_values += array.size
            else:
                kept.append(array)
        if kept:
            rows = kept[0] if len(kept) == 1 else np.concatenate(kept)  # one copy, then one into the ring
            if self._fits(rows):
                monitor.ring.write(rows.reshape(-1, self.width))
            else:
                self._warn_shape(rows)
        if probe_values:
            monitor.ring.skip(probe_values // self.width)

    def _fits(self, output: np.ndarray) -> bool:
        """A batched output's rows (all but the batch dimension), or a whole unbatched answer, are the reference's size."""
        if self.batched:
            return output.ndim >= 1 and output.size == len(output) * self.width
        return output.size % self.width == 0

    def _warn_shape(self, output) -> None:
        if not self._warned_shape:
            self._warned_shape = True
            shape = None if output is None else list(output.shape)
            pb_utils.Logger.log_warn(
                f"drift monitor of '{self.model}': output '{self.config.output}' {shape} does not fit the "
                f"reference's rows of {self.width}: not observed")

    # --- beside it -----------------------------------------------------------------

    def _step(self) -> None:
        """One round of the scorer thread: look for the reference, or score the window and publish."""
        if self.monitor is None:
            self._load_reference()
            return
        scores = self.scorer.step()
        if scores is not None and self._served:
            self.publish(scores)

    def publish(self, scores) -> None:
        for name, value in scores.statistics.items():
            self.metrics.set(catalogue.DRIFT_SCORE, value, statistic=name)
        self.metrics.set(catalogue.DRIFT_WINDOW_FILL, scores.fill)
        self.metrics.set(catalogue.DRIFT_ALARM, 1.0 if scores.alarm else 0.0)

    def close(self) -> None:
        self._thread.stop(join_s=2 * defaults.DRIFT_EVALUATE_S)
        if self.scorer is not None:
            self.scorer.close()
