"""pipeline step 2: the torch digit classifier, on the instance's device.

A KIND_GPU instance runs on its GPU (configs/gpu.pbtxt); a KIND_CPU instance
runs on the CPU with one torch thread, so instances do not fight over cores.

Under `triton-guard serve --chaos` a ChaosHook applies injected faults
(triton_guard.chaos.hook); otherwise `self.chaos` is None and execute pays one
`is not None` check.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from triton_guard.guard.batching import split_like
from triton_guard.chaos.hook import hook_from_environment, perturbed_weights
from triton_guard.chaos.protocol import FaultKind
from triton_guard_demo.digits_net import load_digits_net

WEIGHTS_FILE = "digits_net.pt"


class TritonPythonModel:
    def initialize(self, args):
        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(1)
        self.weights = os.path.join(args["model_repository"], args["model_version"], WEIGHTS_FILE)
        self.net = load_digits_net(self.weights, device=self.device)
        self.model_name = json.loads(args["model_config"])["name"]
        self.chaos = hook_from_environment(self.model_name, **self._leak_memory())
        self.drifted = None  # ((drift_scale, seed), net): the last drift fault's weights

    def execute(self, requests):
        if self.chaos is not None:
            return self._execute_with_chaos(requests)
        batches = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        return self._respond(self._classify(self.net, batches), batches)

    def _classify(self, net, batches):
        with torch.inference_mode():
            pixels = torch.from_numpy(np.concatenate(batches)).to(self.device)
            return torch.softmax(net(pixels), dim=1).cpu().numpy()

    def _respond(self, probs, batches):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", rows)])
            for rows in split_like(probs, batches)
        ]

    def _execute_with_chaos(self, requests):
        fault = self.chaos.before()  # blocks on hang, sleeps on slow
        if fault is not None and fault.kind is FaultKind.ERROR:
            # One TritonError per response: Triton frees each response's error,
            # so one object shared by a batch crashed tritonserver (SIGSEGV).
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(self.chaos.error_message)) for _ in requests]
        net = self.net
        if fault is not None and fault.kind is FaultKind.DRIFT:
            net = self._drifted_net(fault)
        batches = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        probs = self.chaos.after_outputs(fault, self._classify(net, batches))
        return self._respond(probs, batches)

    def _drifted_net(self, fault):
        # Built once per drift fault, not per request.
        key = (fault.drift_scale, fault.seed)
        if self.drifted is None or self.drifted[0] != key:
            clean = {k: v.cpu().numpy() for k, v in self.net.state_dict().items()}
            noisy = perturbed_weights(clean, fault.drift_scale, fault.seed)
            net = load_digits_net(self.weights, device=self.device)
            net.load_state_dict({k: torch.from_numpy(v) for k, v in noisy.items()})
            self.drifted = (key, net)
        return self.drifted[1]

    def _leak_memory(self):
        """On a GPU instance the leak holds GPU memory, as in the incident."""
        if self.device.type != "cuda":
            return {}  # the hook's default: touched host memory
        device = self.device

        def allocate(nbytes):
            return torch.ones(nbytes, dtype=torch.uint8, device=device)

        def release():
            with torch.cuda.device(device):  # empty_cache acts on the current device
                torch.cuda.empty_cache()  # give the cached blocks back, so free memory really rises

        return {"allocate": allocate, "release": release}

    def finalize(self):
        if self.chaos is not None:
            self.chaos.close()
