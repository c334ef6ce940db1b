"""The digits data set, its held-out split, and the one normalisation step.

The server's preprocess model imports `normalize` from here, so this module
must import without scikit-learn or torch (the loader imports sklearn lazily).
Training and serving share `normalize`, which makes server accuracy equal the
training report's accuracy bit for bit.
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0  # fixed so the held-out set never changes between runs
TEST_SIZE = 0.25  # fraction of the 1797 digits held out for evaluation
SKLEARN_MAX_LEVEL = 16  # sklearn's digits are 4-bit counts, 0..16
UINT8_MAX_LEVEL = 255  # the server receives 8-bit grey levels


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """Return sklearn's bundled 8x8 digits as uint8 images [N, 8, 8] and int64 labels [N].

    The data ships with scikit-learn (no download); the 0..16 levels are
    rescaled to 0..255 so the images look like what a client would send.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * UINT8_MAX_LEVEL / SKLEARN_MAX_LEVEL).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    return images, labels


def heldout_split(
    images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split into (train_x, train_y, test_x, test_y), stratified and deterministic."""
    from sklearn.model_selection import train_test_split

    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=TEST_SIZE, stratify=labels, random_state=SPLIT_SEED
    )
    return train_x, train_y, test_x, test_y


def normalize(images_uint8: np.ndarray) -> np.ndarray:
    """Map uint8 images [N, 8, 8] to the float32 model input [N, 64] in [0, 1]."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(UINT8_MAX_LEVEL)
