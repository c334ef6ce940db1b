"""Bench-only upstream heavier than the digits MLP: a small torch CNN (~2 ms per image, one CPU thread).

Weights are random from a fixed seed: the benchmark measures what the guard
costs beside a model that does real work, not what the model predicts.
"""

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from triton_guard.guard.batching import split_like


def build_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Upsample(size=(32, 32), mode="bilinear"),
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    ).eval()


class TritonPythonModel:
    def initialize(self, args):
        torch.set_num_threads(1)  # instances do not fight over the cores
        self.net = build_net()

    def execute(self, requests):
        batches = [pb_utils.get_input_tensor_by_name(r, "PIXELS").as_numpy() for r in requests]
        with torch.inference_mode():
            pixels = torch.from_numpy(np.concatenate(batches)).reshape(-1, 1, 8, 8)
            probs = torch.softmax(self.net(pixels), dim=1).numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", rows)]) for rows in split_like(probs, batches)]
