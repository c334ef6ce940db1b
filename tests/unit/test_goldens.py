"""triton_guard.canary.goldens: tensors as JSON, the output hash, case files, recording, and the demo's goldens."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from triton_guard.canary.goldens import (
    GOLDEN_SUFFIX,
    GoldenCase,
    GoldenError,
    case_files,
    case_path,
    outputs_hash,
    record_case,
    record_case_file,
    reproducibility_problem,
    tensor_from_json,
    tensor_to_json,
)
from triton_guard.canary.golden_check import compare_case
from triton_guard_demo.digits import heldout_split, load_digits_uint8

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_GOLDENS = REPO_ROOT / "model_repository" / "pipeline" / "goldens" / f"digits{GOLDEN_SUFFIX}"

ONE_MINUS_2_POW_24 = 1.0 - 2.0**-24  # the largest float32 below 1
TINY = float(np.float32(1e-38))  # a float32 subnormal


def _case(answer: dict, inputs: dict | None = None, device: str = "cpu", tolerances=None, existing=None) -> GoldenCase:
    inputs = inputs if inputs is not None else {"X": np.array([1.0, 2.0], np.float32)}
    return record_case("m", "c", inputs, answer, answer, device, tolerances or {}, 1e-4, {"by": "test"}, existing)


# --- tensors <-> JSON ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_floats_round_trip_bit_exactly(dtype):
    values = np.array([0.1, ONE_MINUS_2_POW_24, TINY, -2.5e-8, 65504.0 if dtype == np.float16 else 3.4e38], dtype=dtype)
    name, back = tensor_from_json(json.loads(json.dumps(tensor_to_json("Y", values))), "test")
    assert name == "Y" and back.dtype == dtype
    np.testing.assert_array_equal(back.view(np.uint8), values.view(np.uint8))


def test_integers_and_bools_round_trip_with_their_extremes():
    for array in (np.array([np.iinfo(np.int64).min, 0, np.iinfo(np.int64).max]),
                  np.array([np.iinfo(np.uint64).max], np.uint64),
                  np.array([[-128, 127]], np.int8),
                  np.array([True, False])):
        _, back = tensor_from_json(json.loads(json.dumps(tensor_to_json("T", array))), "test")
        assert back.dtype == array.dtype and back.shape == array.shape
        np.testing.assert_array_equal(back, array)


def test_bytes_are_text_when_utf8_and_base64_otherwise():
    array = np.array([[b"hello"], ["h\u00e9".encode()], [b"\xff\x00binary"]], dtype=object)
    tensor = tensor_to_json("TEXT", array)
    assert tensor["datatype"] == "BYTES" and tensor["shape"] == [3, 1]
    assert tensor["data"][:2] == ["hello", "h\u00e9"]
    assert tensor["data"][2] == {"base64": "/wBiaW5hcnk="}
    _, back = tensor_from_json(json.loads(json.dumps(tensor)), "test")
    assert back.tolist() == array.tolist()
    text = _case({"T": array}).to_json()
    assert '"h\u00e9"' in text and r'"h\u00e9"' not in text  # text stays readable in the file


def test_the_inputs_of_a_case_are_a_kserve_request_body():
    case = _case({"Y": np.array([1.0], np.float32)}, inputs={"A": np.array([[1, 2]], np.int32), "T": np.array([b"x"], object)})
    body = {"inputs": json.loads(case.to_json())["inputs"]}
    assert body == {"inputs": [
        {"name": "A", "datatype": "INT32", "shape": [1, 2], "data": [1, 2]},
        {"name": "T", "datatype": "BYTES", "shape": [1], "data": ["x"]},
    ]}


def test_a_tensor_whose_data_does_not_fill_its_shape_is_refused():
    with pytest.raises(GoldenError, match="tensor 'Y': shape \\[2, 2\\] needs 4 values"):
        tensor_from_json({"name": "Y", "datatype": "FP32", "shape": [2, 2], "data": [1.0]}, "f.json")


# --- the hash -----------------------------------------------------------------------


def test_hash_by_hand_for_a_float_and_a_bytes_output():
    outputs = {"Y": np.array([1.0], np.float32), "T": np.array([b"ab"], dtype=object)}
    by_hand = hashlib.sha256(
        b"T\0BYTES\0" + struct.pack("<q", 1) + struct.pack("<I", 2) + b"ab"
        + b"Y\0FP32\0" + struct.pack("<q", 1) + bytes([0x00, 0x00, 0x80, 0x3F])
    ).hexdigest()
    assert outputs_hash(outputs) == by_hand


def test_hash_does_not_depend_on_byte_order_but_on_dtype_shape_and_one_ulp():
    base = outputs_hash({"Y": np.array([0.5, 0.125], np.float32)})
    assert outputs_hash({"Y": np.array([0.5, 0.125], ">f4")}) == base
    assert outputs_hash({"Y": np.array([0.5, 0.125], np.float64)}) != base
    assert outputs_hash({"Y": np.array([[0.5, 0.125]], np.float32)}) != base
    assert outputs_hash({"Y": np.array([0.5, np.nextafter(np.float32(0.125), np.float32(1))], np.float32)}) != base


# --- a case file --------------------------------------------------------------------


def test_a_case_round_trips_through_its_file(tmp_path):
    answer = {"Y": np.array([[ONE_MINUS_2_POW_24], [TINY]], np.float32), "N": np.array([[3], [-1]], np.int64),
              "T": np.array([[b"A"], [b"\xfe"]], dtype=object)}
    case = _case(answer, inputs={"X": np.array([[0.1], [0.2]], np.float32)})
    path = case_path(tmp_path / "m", "c")
    path.parent.mkdir(parents=True)
    path.write_text(case.to_json())
    assert case_files(tmp_path / "m") == [path]
    back = GoldenCase.load(path)
    assert (back.model, back.name, sorted(back.expected)) == ("m", "c", ["cpu"])
    expected = back.expected["cpu"]
    assert expected.sha256 == outputs_hash(answer) and expected.environment == {"by": "test"}
    assert {n: o.tolerance for n, o in expected.outputs.items()} == {"N": 0.0, "T": 0.0, "Y": 1e-4}
    assert compare_case(back, "cpu", answer).bit_exact


def test_each_tensor_is_one_line_of_the_file():
    text = _case({"Y": np.arange(50, dtype=np.float32)}).to_json()
    data_lines = [line for line in text.splitlines() if '"data"' in line]
    assert len(data_lines) == 2  # the input X and the output Y
    assert len(text.splitlines()) < 40


def test_a_file_whose_outputs_do_not_match_its_hash_is_refused(tmp_path):
    data = json.loads(_case({"Y": np.array([0.5], np.float32)}).to_json())
    data["expected"]["cpu"]["outputs"][0]["data"] = [0.5000001]
    path = tmp_path / "m.golden.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GoldenError, match=f"{path}: cpu: sha256 does not match"):
        GoldenCase.load(path)


@pytest.mark.parametrize("text, message", [
    ("{", "not JSON"),
    ('{"format": 99}', "not a golden case"),
    ('{"format": 1, "model": "m", "case": "c", "inputs": [], "expected": {}}', "'inputs' must list"),
])
def test_unusable_files_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "x.golden.json"
    path.write_text(text)
    with pytest.raises(GoldenError, match=message) as caught:
        GoldenCase.load(path)
    assert str(path) in str(caught.value)


# --- recording ------------------------------------------------------------------------


def test_answers_that_differ_between_two_calls_are_refused_naming_the_output_and_the_difference():
    first = {"Y": np.array([0.5, 0.25], np.float32), "N": np.array([1], np.int64)}
    second = {"Y": np.array([0.5, 0.2500001], np.float32), "N": np.array([1], np.int64)}
    diff = float(np.float32(0.2500001)) - 0.25  # three float32 steps above 0.25
    assert reproducibility_problem(first, second) == f"output 'Y' differs between two calls by up to {diff:.3g} (at [1])"
    with pytest.raises(GoldenError, match="not reproducible: output 'Y' differs"):
        record_case("m", "c", {"X": np.zeros(1, np.float32)}, first, second, "cpu", {}, 1e-4, {})


def test_bytes_and_missing_outputs_that_differ_are_named():
    assert reproducibility_problem({"T": np.array([b"a"], object)}, {"T": np.array([b"b"], object)}) == (
        "output 'T' differs between two calls at [0]: b'a' then b'b'")
    assert reproducibility_problem({"T": np.array([1])}, {}) == "output 'T' came in only one of the two answers"
    assert reproducibility_problem({"T": np.array([1])}, {"T": np.array([1])}) is None


def test_a_nan_answer_or_input_is_not_recorded():
    with pytest.raises(GoldenError, match="output 'Y' holds NaN or inf"):
        _case({"Y": np.array([np.nan], np.float32)})
    with pytest.raises(GoldenError, match="tensor 'X' holds NaN or inf"):
        _case({"Y": np.array([1.0], np.float32)}, inputs={"X": np.array([np.inf], np.float32)})


def test_a_tolerance_for_an_unknown_output_is_refused():
    with pytest.raises(GoldenError, match="--tolerance names Z, not outputs of 'm' \\(Y\\)"):
        _case({"Y": np.array([1.0], np.float32)}, tolerances={"Z": 0.1})


def test_recording_another_device_class_keeps_the_first_with_the_same_inputs_only():
    cpu = _case({"Y": np.array([1.0], np.float32)})
    both = _case({"Y": np.array([1.0000001], np.float32)}, device="gpu", existing=cpu)
    assert sorted(both.expected) == ["cpu", "gpu"] and both.expected["cpu"] == cpu.expected["cpu"]
    again = _case({"Y": np.array([1.0], np.float32)}, inputs={"X": np.array([9.0, 9.0], np.float32)},
                  device="gpu", existing=both)
    assert sorted(again.expected) == ["gpu"]


def test_recording_into_a_case_file_keeps_its_other_device_class_and_replaces_an_unreadable_one(tmp_path):
    inputs, cpu_answer = {"X": np.array([1.0, 2.0], np.float32)}, {"Y": np.array([1.0], np.float32)}
    path = case_path(tmp_path / "m", "c")
    path.parent.mkdir(parents=True)
    path.write_text(_case(cpu_answer).to_json())
    gpu_answer = {"Y": np.array([1.0000001], np.float32)}
    written, case = record_case_file(tmp_path / "m", "c", inputs, gpu_answer, gpu_answer, "gpu", {}, 1e-4, {})
    assert written == path and case.model == "m" and sorted(case.expected) == ["cpu", "gpu"]
    assert case.expected["cpu"] == _case(cpu_answer).expected["cpu"]
    path.write_text("{not json")
    _, case = record_case_file(tmp_path / "m", "c", inputs, gpu_answer, gpu_answer, "gpu", {}, 1e-4, {})
    assert sorted(case.expected) == ["gpu"]


# --- the demo's goldens ---------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return GoldenCase.load(DEMO_GOLDENS)  # also checks the stored sha256


def test_demo_goldens_load_with_exact_labels_and_a_tolerance_on_probs(demo):
    assert (demo.model, demo.name) == ("pipeline", "digits")
    outputs = demo.expected["cpu"].outputs
    assert outputs["LABEL"].value.shape == (10, 1) and outputs["LABEL"].tolerance == 0.0
    assert outputs["PROBS"].value.shape == (10, 10) and 0 < outputs["PROBS"].tolerance < 1e-2
    assert demo.inputs["IMAGE"].shape == (10, 8, 8) and demo.inputs["IMAGE"].dtype == np.uint8


def test_demo_goldens_hold_one_heldout_image_per_class_with_its_true_label(demo):
    _, _, test_x, test_y = heldout_split(*load_digits_uint8())
    labels = demo.expected["cpu"].outputs["LABEL"].value.ravel()
    assert sorted(labels.tolist()) == list(range(10))
    for image, label in zip(demo.inputs["IMAGE"], labels):
        matches = np.flatnonzero((test_x == image).all(axis=(1, 2)))
        assert matches.size >= 1, f"golden image for label {label} is not in the held-out split"
        assert {int(test_y[i]) for i in matches} == {int(label)}


def test_demo_golden_probs_are_distributions_agreeing_with_labels(demo):
    probs = demo.expected["cpu"].outputs["PROBS"].value
    np.testing.assert_allclose(probs.astype(np.float64).sum(axis=1), np.ones(10), rtol=0, atol=1e-5)
    assert (probs >= 0).all()
    np.testing.assert_array_equal(probs.argmax(axis=1), demo.expected["cpu"].outputs["LABEL"].value.ravel())


# --- the recorder's checks before it asks a server (triton_guard.canary.record) ---------

from triton_guard import cli  # noqa: E402
from triton_guard.canary.record import RecordUsage, _as_declared, record  # noqa: E402


def test_an_npz_of_float64_for_an_fp32_input_is_sent_as_fp32_but_nothing_is_cast_across_kinds():
    assert _as_declared(np.array([0.1, 0.2]), "FP32").dtype == np.float32
    assert _as_declared(np.array([1, 2]), "INT32").dtype == np.int32
    assert _as_declared(np.array([1.5]), "INT32").dtype == np.float64  # Triton says what is wrong
    assert _as_declared(np.array([b"a"], object), "BYTES").dtype == object


def test_a_big_endian_npz_input_is_sent_in_native_byte_order():
    # tritonclient's set_data_from_numpy refuses a big-endian array (np.save keeps the byte order it was given).
    sent = _as_declared(np.array([1.5, -2.0], dtype=">f4"), "FP32")
    assert sent.dtype == np.float32 and sent.dtype.isnative
    assert sent.tolist() == [1.5, -2.0]
    kept = _as_declared(np.array([1.5], dtype=">f8"), "INT32")  # float to int: not cast, only reordered
    assert kept.dtype == np.float64 and kept.dtype.isnative and kept.tolist() == [1.5]


def test_a_bad_case_name_or_inputs_file_is_a_usage_error_before_any_server_is_asked(tmp_path):
    good = tmp_path / "x.json"
    good.write_text(json.dumps({"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}]}))
    with pytest.raises(RecordUsage, match="case name 'a b'"):
        record("localhost:1", "m", good, tmp_path, case_name="a b")
    with pytest.raises(RecordUsage, match="missing.json"):
        record("localhost:1", "m", tmp_path / "missing.json", tmp_path)


@pytest.mark.parametrize("tolerance", ["abc", "Y=-1", "inf", "Y="])
def test_a_bad_tolerance_is_refused_in_one_line_with_exit_2(tolerance, capsys):
    code = cli.main(["goldens", "record", "--model", "m", "--inputs", "x.json", "--tolerance", tolerance])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"triton-guard goldens record: error: --tolerance {tolerance!r}: expected [OUTPUT=]NUMBER >= 0"]
