"""pipeline step 3: class probabilities -> the predicted label.

Every answer also feeds the output distribution monitor (triton_guard.drift.monitor):
a copy into its window here, the statistics in its own thread.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard.guard.batching import split_like
from triton_guard.backends.drift_tap import TritonDriftMonitor


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.drift = None
        if params.get("drift_reference"):
            # Relative to the model repository's root.
            reference = Path(args["model_repository"]).parent / params["drift_reference"]
            if reference.exists():
                self.drift = TritonDriftMonitor(reference)
            else:  # the canary reports the monitor as missing; answers still flow
                pb_utils.Logger.log_warn(f"drift monitor off: no reference at {reference} (scripts/make_goldens.py)")

    def execute(self, requests):
        probs = [pb_utils.get_input_tensor_by_name(r, "PROBS").as_numpy() for r in requests]
        batch = np.concatenate(probs)
        if self.drift is not None:
            self.drift.observe(batch)
        labels = np.argmax(batch, axis=1).astype(np.int64).reshape(-1, 1)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("LABEL", rows)])
            for rows in split_like(labels, probs)
        ]

    def finalize(self):
        if self.drift is not None:
            self.drift.close()
