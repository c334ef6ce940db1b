"""pipeline step 3: class probabilities -> the predicted label.

(The output drift monitor watches the classifier's PROBS where its guard
sees them: classifier_guard's `drift_output` parameter.)
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard.guard.batching import split_like


class TritonPythonModel:
    def execute(self, requests):
        probs = [pb_utils.get_input_tensor_by_name(r, "PROBS").as_numpy() for r in requests]
        labels = np.argmax(np.concatenate(probs), axis=1).astype(np.int64).reshape(-1, 1)
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("LABEL", rows)])
            for rows in split_like(labels, probs)
        ]
