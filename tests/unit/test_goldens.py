"""triton_guard.canary.goldens: the output hash, the JSON round trip, compare, and the committed goldens."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from triton_guard_demo.digits import heldout_split, load_digits_uint8
from triton_guard.canary.goldens import GOLDENS_DIR, Golden, compare, output_hash

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_GOLDENS = REPO_ROOT / "model_repository" / "canary" / GOLDENS_DIR / "cpu.json"

F32_TENTH = float(np.float32(0.1))  # 0x3dcccccd
ONE_MINUS_2_POW_24 = 1.0 - 2.0**-24  # the largest float32 below 1
TINY = float(np.float32(1e-38))  # a float32 subnormal


def reference_hash(labels: list[int], probs: list[float]) -> str:
    """sha256 of int64 little-endian labels then float32 little-endian probs, via struct."""
    data = struct.pack(f"<{len(labels)}q", *labels) + struct.pack(f"<{len(probs)}f", *probs)
    return hashlib.sha256(data).hexdigest()


def make_golden(tolerance: float = 1e-4) -> Golden:
    labels = np.array([[3], [7]], dtype=np.int64)
    probs = np.zeros((2, 10), dtype=np.float32)
    probs[0, 3], probs[0, 1], probs[0, 0] = ONE_MINUS_2_POW_24, 2.0**-24, TINY
    probs[1, 7], probs[1, 2], probs[1, 9] = 0.5, F32_TENTH, 0.4
    images = np.arange(2 * 64, dtype=np.uint8).reshape(2, 8, 8)
    return Golden(
        device_class="cpu",
        images=images,
        labels=labels,
        probs=probs,
        sha256=reference_hash(labels.ravel().tolist(), probs.ravel().tolist()),
        tolerance=tolerance,
        environment={"torch": "test"},
    )


# --- output_hash ------------------------------------------------------------------


def test_output_hash_is_sha256_of_le_int64_labels_then_le_float32_probs():
    labels = np.array([[2], [9]], dtype=np.int64)
    probs = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float32)
    assert output_hash(labels, probs) == reference_hash([2, 9], [0.25, 0.75, 1.0, 0.0])


def test_output_hash_by_hand_bytes():
    # One label 1, one prob 1.0f: 01 00 00 00 00 00 00 00 | 00 00 80 3f
    expected = hashlib.sha256(bytes([1, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x80, 0x3F])).hexdigest()
    assert output_hash(np.array([[1]]), np.array([[1.0]], dtype=np.float32)) == expected


def test_output_hash_does_not_depend_on_input_dtype_or_byte_order():
    expected = reference_hash([4, 5], [0.5, 0.125])
    assert output_hash(np.array([4, 5], dtype=np.int32), np.array([0.5, 0.125], dtype=np.float64)) == expected
    assert output_hash(np.array([4, 5], dtype=">i8"), np.array([0.5, 0.125], dtype=">f4")) == expected


def test_output_hash_changes_with_one_ulp():
    probs = np.array([0.5, 0.5], dtype=np.float32)
    bumped = probs.copy()
    bumped[1] = np.nextafter(bumped[1], np.float32(1))
    assert output_hash(np.array([0]), probs) != output_hash(np.array([0]), bumped)


# --- JSON round trip --------------------------------------------------------------


def test_round_trip_keeps_float32_bits_exactly(tmp_path):
    golden = make_golden()
    path = tmp_path / "cpu.json"
    path.write_text(golden.to_json())
    loaded = Golden.load(path)
    assert loaded.probs.dtype == np.float32
    np.testing.assert_array_equal(loaded.probs.view(np.uint32), golden.probs.view(np.uint32))
    np.testing.assert_array_equal(loaded.labels, golden.labels)
    np.testing.assert_array_equal(loaded.images, golden.images)
    assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int64
    assert (loaded.device_class, loaded.sha256, loaded.tolerance, loaded.environment) == (
        "cpu", golden.sha256, 1e-4, {"torch": "test"},
    )


def test_probs_are_stored_as_hex_floats(tmp_path):
    data = json.loads(make_golden().to_json())
    # 0.1f = 0x3dcccccd = 1.6000000238418579 * 2^-4; 1 - 2^-24 = 0x1.fffffe * 2^-1.
    assert data["probs"][1][2] == "0x1.99999a0000000p-4"
    assert data["probs"][0][3] == "0x1.fffffe0000000p-1"
    assert data["probs"][0][1] == "0x1.0000000000000p-24"
    assert float.fromhex(data["probs"][0][0]) == TINY


def test_load_rejects_a_hash_that_does_not_match(tmp_path):
    data = json.loads(make_golden().to_json())
    data["sha256"] = "0" * 64
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sha256"):
        Golden.load(path)


def test_load_rejects_outputs_changed_by_one_ulp(tmp_path):
    data = json.loads(make_golden().to_json())
    data["probs"][1][7] = float(np.nextafter(np.float32(0.5), np.float32(1))).hex()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="sha256"):
        Golden.load(path)


# --- compare ----------------------------------------------------------------------


def test_identical_outputs_are_bit_exact():
    golden = make_golden()
    result = compare(golden, golden.labels.copy(), golden.probs.copy())
    assert result.bit_exact and result.labels_match and result.ok
    assert result.max_abs_diff == 0.0
    assert result.reason == "bit-exact"


def test_flat_outputs_are_reshaped_to_the_golden():
    golden = make_golden()
    result = compare(golden, golden.labels.ravel().astype(np.int32), golden.probs.ravel())
    assert result.bit_exact and result.ok


def test_one_ulp_is_within_tolerance_not_bit_exact():
    golden = make_golden()
    probs = golden.probs.copy()
    probs[1, 7] = np.nextafter(np.float32(0.5), np.float32(1))  # 0.5 + 2^-24
    result = compare(golden, golden.labels, probs)
    assert not result.bit_exact
    assert result.labels_match and result.ok
    assert result.max_abs_diff == 2.0**-24
    assert result.reason.startswith("within tolerance")


def test_a_flipped_label_fails_even_with_identical_probs():
    golden = make_golden()
    labels = golden.labels.copy()
    labels[1, 0] = 2
    result = compare(golden, labels, golden.probs)
    assert not result.ok and not result.labels_match and not result.bit_exact
    assert "labels" in result.reason


def test_diff_above_tolerance_fails():
    golden = make_golden(tolerance=1e-4)
    probs = golden.probs.copy()
    probs[1, 9] += np.float32(2e-4)
    result = compare(golden, golden.labels, probs)
    assert not result.ok and result.labels_match
    assert result.max_abs_diff == pytest.approx(2e-4, rel=1e-3)
    assert "exceeds tolerance" in result.reason


def test_tolerance_boundary_is_inclusive():
    # 0.5 + 2^-10 is exact in float32, so |dPROBS| is exactly 2^-10.
    probs = make_golden().probs.copy()
    probs[1, 7] = np.float32(0.5 + 2.0**-10)
    at_limit = compare(make_golden(tolerance=2.0**-10), make_golden().labels, probs)
    assert at_limit.max_abs_diff == 2.0**-10 and at_limit.ok
    below_limit = compare(make_golden(tolerance=2.0**-10 - 2.0**-30), make_golden().labels, probs)
    assert not below_limit.ok


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_outputs_fail(bad):
    golden = make_golden()
    probs = golden.probs.copy()
    probs[0, 5] = bad
    result = compare(golden, golden.labels, probs)
    assert not result.ok and not result.bit_exact
    assert "not finite" in result.reason


def test_huge_tolerance_does_not_let_nan_through():
    golden = dataclasses.replace(make_golden(), tolerance=1e30)
    probs = golden.probs.copy()
    probs[0, 0] = np.nan
    assert not compare(golden, golden.labels, probs).ok


# --- the committed goldens ----------------------------------------------------------


@pytest.fixture(scope="module")
def heldout():
    _, _, test_x, test_y = heldout_split(*load_digits_uint8())
    return test_x, test_y


def test_committed_cpu_goldens_load():
    golden = Golden.load(CPU_GOLDENS)  # also checks the stored sha256
    assert golden.device_class == "cpu"
    assert golden.images.shape == (10, 8, 8) and golden.labels.shape == (10, 1) and golden.probs.shape == (10, 10)
    assert 0 < golden.tolerance < 1e-2


def test_committed_goldens_hold_one_heldout_image_per_class_with_its_true_label(heldout):
    test_x, test_y = heldout
    golden = Golden.load(CPU_GOLDENS)
    assert sorted(golden.labels.ravel().tolist()) == list(range(10))
    for image, label in zip(golden.images, golden.labels.ravel()):
        matches = np.flatnonzero((test_x == image).all(axis=(1, 2)))
        assert matches.size >= 1, f"golden image for label {label} is not in the held-out split"
        assert {int(test_y[i]) for i in matches} == {int(label)}


def test_committed_golden_probs_are_distributions_agreeing_with_labels():
    golden = Golden.load(CPU_GOLDENS)
    sums = golden.probs.astype(np.float64).sum(axis=1)
    np.testing.assert_allclose(sums, np.ones(10), rtol=0, atol=1e-5)
    assert (golden.probs >= 0).all()
    np.testing.assert_array_equal(golden.probs.argmax(axis=1), golden.labels.ravel())
