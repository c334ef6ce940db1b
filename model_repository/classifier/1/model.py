"""pipeline step 2: the torch digit classifier, on the instance's device.

A KIND_GPU instance runs on its GPU (configs/gpu.pbtxt); a KIND_CPU instance
runs on the CPU with one torch thread, so instances do not fight over cores.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from triton_guard.batching import split_like
from triton_guard.digits_net import load_digits_net

WEIGHTS_FILE = "digits_net.pt"


class TritonPythonModel:
    def initialize(self, args):
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(1)
        weights = os.path.join(args["model_repository"], args["model_version"], WEIGHTS_FILE)
        self.net = load_digits_net(weights, device=self.device)
        self.model_name = json.loads(args["model_config"])["name"]

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        with torch.inference_mode():
            pixels = torch.from_numpy(np.concatenate(batches)).to(self.device)
            probs = torch.softmax(self.net(pixels), dim=1).cpu().numpy()
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", rows)])
            for rows in split_like(probs, batches)
        ]
