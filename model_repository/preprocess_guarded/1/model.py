"""Preprocess, then call the classifier behind the guard, in one step."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard.guard.batching import split_like
from triton_guard import GuardedUpstream
from triton_guard_demo.digits import normalize


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        upstream = params.pop("upstream_model")
        self.classifier = GuardedUpstream(
            upstream, instance_name=args["model_instance_name"], upstream_batches=True,
            repository=Path(args["model_repository"]).parent, **params
        )

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy() for r in requests]
        # One call for the whole batch; the breaker counts every request in it.
        result = self.classifier.infer({"PIXELS": normalize(np.concatenate(images))}, ["PROBS"], requests=len(requests))
        if not result.ok:
            return [self.classifier.error_response(result) for _ in requests]
        self.classifier.observe(result.value, requests)  # output drift monitor: a copy into its window
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", rows)])
            for rows in split_like(result.value["PROBS"], images)
        ]

    def finalize(self):
        self.classifier.close()
