"""pipeline step 1: grey levels 0-255 -> the classifier's float features.

It also stamps when each request entered the pipeline (GUARD_ARRIVED_NS,
CLOCK_MONOTONIC): the guard's deadline counts from there, so time queued in
front of the guard is part of timeout_ms, not added to it.
"""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard.guard.batching import split_like
from triton_guard_demo.digits import normalize


class TritonPythonModel:
    def execute(self, requests):
        arrived = np.array([[time.monotonic_ns()]], dtype=np.int64)
        # One normalisation for the whole dynamic batch, then split per request.
        images = [pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy() for r in requests]
        pixels = normalize(np.concatenate(images))
        return [
            pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor("PIXELS", rows),
                    pb_utils.Tensor(defaults.ARRIVAL_INPUT, np.repeat(arrived, len(rows), axis=0)),
                ]
            )
            for rows in split_like(pixels, images)
        ]
