"""The digit classifier served as the `classifier` model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

N_PIXELS = 64  # one flattened 8x8 image
N_HIDDEN = 128  # enough for ~97% held-out accuracy while the weights stay ~40 KB
N_CLASSES = 10


class DigitNet(nn.Module):
    """MLP 64 -> 128 -> 10; returns logits (argmax is the predicted digit)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(N_PIXELS, N_HIDDEN),
            nn.ReLU(),
            nn.Linear(N_HIDDEN, N_CLASSES),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels)


def load_digits_net(path: str | Path, device: str | torch.device = "cpu") -> DigitNet:
    """Load trained weights into a DigitNet in eval mode.

    `weights_only=True` so loading a weights file can never run pickled code.
    """
    model = DigitNet()
    state_dict = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state_dict)
    return model.to(device).eval()
