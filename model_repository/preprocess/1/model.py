"""pipeline step 1: grey levels 0-255 -> the classifier's float features."""

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard.batching import split_like
from triton_guard.digits import normalize


class TritonPythonModel:
    def execute(self, requests):
        # One normalisation for the whole dynamic batch, then split per request.
        images = [pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy() for r in requests]
        pixels = normalize(np.concatenate(images))
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("PIXELS", rows)])
            for rows in split_like(pixels, images)
        ]
