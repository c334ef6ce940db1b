"""Digits data, split, normalisation, the committed classifier and the perf input file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from triton_guard_demo.digits import (
    SPLIT_SEED,
    TEST_SIZE,
    heldout_split,
    load_digits_uint8,
    normalize,
)
from triton_guard_demo.digits_net import DigitNet, load_digits_net

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSIFIER_DIR = REPO_ROOT / "model_repository" / "classifier" / "1"
WEIGHTS_PATH = CLASSIFIER_DIR / "digits_net.pt"
REPORT_PATH = CLASSIFIER_DIR / "training_report.json"
PERF_INPUT_PATH = REPO_ROOT / "bench" / "digits_perf_input.json"
MIN_ACCURACY = 0.95


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray]:
    return load_digits_uint8()


@pytest.fixture(scope="module")
def split(dataset):
    return heldout_split(*dataset)


def test_digits_module_imports_without_sklearn_or_torch():
    """The Triton preprocess model imports `normalize` where neither may be installed."""
    code = (
        "import sys; sys.modules['sklearn'] = None; sys.modules['torch'] = None; "
        "import numpy as np; from triton_guard_demo.digits import normalize; "
        "print(normalize(np.zeros((1, 8, 8), np.uint8)).shape)"
    )
    src = str(REPO_ROOT / "src")
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": src},
    )
    assert result.stdout.strip() == "(1, 64)"


def test_uint8_images_have_expected_dtype_shape_and_range(dataset):
    images, labels = dataset
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert labels.dtype == np.int64 and labels.shape == (1797,)
    assert images.min() == 0 and images.max() == 255
    assert set(labels.tolist()) == set(range(10))


def test_uint8_images_are_rounded_rescaling_of_sklearn_data(dataset):
    """Recompute from sklearn's flat `data` (not `images`) so the check is independent."""
    images, labels = dataset
    sklearn_digits = load_digits()
    expected = np.rint(sklearn_digits.data * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, sklearn_digits.target)


def test_split_is_deterministic(dataset, split):
    again = heldout_split(*dataset)
    for first, second in zip(split, again):
        np.testing.assert_array_equal(first, second)


def test_split_sizes_match_test_size(dataset, split):
    train_x, train_y, test_x, test_y = split
    n_total = len(dataset[1])
    assert len(test_x) == len(test_y) == int(np.ceil(n_total * TEST_SIZE))
    assert len(train_x) + len(test_x) == n_total
    assert SPLIT_SEED == 0


def test_split_is_disjoint_and_covers_every_sample(dataset):
    """Split sample indices the same way: train and test must partition them."""
    images, labels = dataset
    indices = np.arange(len(labels))
    train_idx, train_y, test_idx, test_y = heldout_split(indices, labels)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == indices.tolist()
    train_x, _, test_x, _ = heldout_split(images, labels)
    np.testing.assert_array_equal(train_x, images[train_idx])
    np.testing.assert_array_equal(test_x, images[test_idx])
    np.testing.assert_array_equal(test_y, labels[test_idx])


def test_split_is_stratified(dataset, split):
    """Each class's test count is within one of its share of the whole set."""
    _, labels = dataset
    _, _, _, test_y = split
    total_counts = np.bincount(labels, minlength=10)
    test_counts = np.bincount(test_y, minlength=10)
    expected = total_counts * len(test_y) / len(labels)
    assert np.all(np.abs(test_counts - expected) <= 1)


def test_normalize_dtype_shape_and_range(dataset):
    images, _ = dataset
    normalized = normalize(images)
    assert normalized.dtype == np.float32
    assert normalized.shape == (len(images), 64)
    assert normalized.min() == 0.0 and normalized.max() == 1.0


def test_normalize_is_invertible(dataset):
    images, _ = dataset
    restored = np.rint(normalize(images) * 255).astype(np.uint8).reshape(images.shape)
    np.testing.assert_array_equal(restored, images)


def test_normalize_rejects_non_uint8():
    with pytest.raises(TypeError):
        normalize(np.zeros((1, 8, 8), dtype=np.float32))


def test_digit_net_outputs_one_logit_per_class():
    model = DigitNet().eval()
    with torch.no_grad():
        logits = model(torch.zeros(5, 64))
    assert logits.shape == (5, 10)


def test_committed_weights_are_small():
    assert WEIGHTS_PATH.stat().st_size < 100_000


def test_committed_weights_reproduce_reported_heldout_accuracy(split):
    _, _, test_x, test_y = split
    report = json.loads(REPORT_PATH.read_text())
    model = load_digits_net(WEIGHTS_PATH)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(test_x)))
    accuracy = float(np.mean(logits.argmax(dim=1).numpy() == test_y))
    assert accuracy == report["heldout_accuracy"]
    assert accuracy >= MIN_ACCURACY
    assert report["n_test"] == len(test_y)
    assert report["split_seed"] == SPLIT_SEED and report["test_size"] == TEST_SIZE


def test_perf_input_file_holds_real_heldout_digits(split):
    _, _, test_x, _ = split
    entries = json.loads(PERF_INPUT_PATH.read_text())["data"]
    assert len(entries) > 0
    heldout_rows = {row.tobytes() for row in test_x.reshape(len(test_x), -1)}
    for entry in entries:
        assert set(entry) == {"IMAGE"}
        assert entry["IMAGE"]["shape"] == [8, 8]
        content = entry["IMAGE"]["content"]
        assert len(content) == 64
        assert all(isinstance(value, int) and 0 <= value <= 255 for value in content)
        assert np.array(content, dtype=np.uint8).tobytes() in heldout_rows
