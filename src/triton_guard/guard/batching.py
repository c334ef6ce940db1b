"""Dynamic batching helpers shared by the pipeline's Python models."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


def split_like(batch: np.ndarray, parts: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    """Cut `batch` (the rows of `parts` concatenated) back into per-request pieces."""
    start = 0
    for part in parts:
        end = start + len(part)
        yield batch[start:end]
        start = end
