"""triton_guard.canary.golden_check: an answer compared with its golden case, and the golden check's verdict."""

from __future__ import annotations

import numpy as np
import pytest

from triton_guard.canary.golden_check import check_golden, compare_case
from triton_guard.canary.goldens import GoldenCase, record_case

ONE_MINUS_2_POW_24 = 1.0 - 2.0**-24  # the largest float32 below 1
TINY = float(np.float32(1e-38))  # a float32 subnormal


def _case(answer: dict, inputs: dict | None = None, device: str = "cpu", tolerances=None, existing=None) -> GoldenCase:
    inputs = inputs if inputs is not None else {"X": np.array([1.0, 2.0], np.float32)}
    return record_case("m", "c", inputs, answer, answer, device, tolerances or {}, 1e-4, {"by": "test"}, existing)



# --- compare ------------------------------------------------------------------------


def _answer_of(case: GoldenCase) -> dict:
    return {n: o.value.copy() for n, o in case.expected["cpu"].outputs.items()}


def test_identical_outputs_are_bit_exact():
    case = _case({"Y": np.array([0.5, 0.25], np.float32), "N": np.array([1], np.int32)})
    result = compare_case(case, "cpu", _answer_of(case))
    assert result.ok and result.bit_exact and result.reason == "case 'c': bit-exact"


def test_one_ulp_is_within_tolerance_not_bit_exact():
    case = _case({"Y": np.array([0.5, 0.25], np.float32)})
    answer = _answer_of(case)
    answer["Y"][0] = np.nextafter(np.float32(0.5), np.float32(1))
    result = compare_case(case, "cpu", answer)
    assert result.ok and not result.bit_exact
    assert result.outputs[0].max_abs_diff == 2.0**-24
    assert result.reason.startswith("case 'c': within tolerance, not bit-exact")


def test_a_float_beyond_tolerance_fails_naming_the_output_and_the_element():
    case = _case({"Y": np.array([[0.5, 0.25]], np.float32)})
    answer = _answer_of(case)
    answer["Y"][0, 1] += np.float32(2e-4)
    result = compare_case(case, "cpu", answer)
    assert not result.ok
    assert result.reason.startswith("case 'c': Y differs by 0.0002 at [0, 1] (0.2502, golden 0.25; tolerance 0.0001)")


def test_tolerance_scales_with_large_values():
    case = _case({"Y": np.array([1e6, 1.0], np.float32)})
    answer = _answer_of(case)
    answer["Y"][0] += np.float32(64)  # 64 <= 1e-4 * 1e6
    assert compare_case(case, "cpu", answer).ok
    answer["Y"][1] += np.float32(0.01)  # 0.01 > 1e-4 * 1
    assert not compare_case(case, "cpu", answer).ok


def test_the_tolerance_boundary_is_inclusive():
    # 0.5 + 2^-10 is exact in float32, so |d| is exactly 2^-10.
    case = _case({"Y": np.array([0.5], np.float32)}, tolerances={"Y": 2.0**-10})
    assert compare_case(case, "cpu", {"Y": np.array([0.5 + 2.0**-10], np.float32)}).ok
    tighter = _case({"Y": np.array([0.5], np.float32)}, tolerances={"Y": 2.0**-10 - 2.0**-30})
    assert not compare_case(tighter, "cpu", {"Y": np.array([0.5 + 2.0**-10], np.float32)}).ok


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_answers_fail_whatever_the_tolerance(bad):
    case = _case({"Y": np.array([0.5, 0.5], np.float32)}, tolerances={"Y": 1e30})
    result = compare_case(case, "cpu", {"Y": np.array([0.5, bad], np.float32)})
    assert not result.ok and "Y is not finite (NaN or inf)" in result.reason


def test_integer_and_bytes_outputs_must_be_identical():
    case = _case({"N": np.array([[4], [5]], np.int32), "T": np.array([[b"HI"], [b"YO"]], dtype=object)})
    answer = _answer_of(case)
    answer["N"][1, 0] = 6
    answer["T"][0, 0] = b"HI!"
    result = compare_case(case, "cpu", answer)
    assert not result.ok
    assert "N differs in 1 of 2 values (first at [1, 0]: 6, golden 5)" in result.reason
    assert "T differs in 1 of 2 values (first at [0, 0]: b'HI!', golden b'HI')" in result.reason


@pytest.mark.parametrize("answer, message", [
    ({}, "Y is missing from the answer"),
    ({"Y": np.array([[0.5, 0.25]], np.float32)}, "Y has shape [1, 2], expected [2]"),
    ({"Y": np.array([0.5, 0.25], np.float64)}, "Y is FP64, expected FP32"),
    ({"Y": np.array([b"a", b"b"], dtype=object)}, "Y is BYTES, expected FP32"),
])
def test_an_answer_of_another_form_fails_saying_how(answer, message):
    result = compare_case(_case({"Y": np.array([0.5, 0.25], np.float32)}), "cpu", answer)
    assert not result.ok and message in result.reason and not result.bit_exact


# --- the golden check ------------------------------------------------------------------


def _pipeline_case() -> GoldenCase:
    answer = {"LABEL": np.array([[1]], dtype=np.int64), "PROBS": np.eye(1, 10, 1, dtype=np.float32)}
    return record_case("pipeline", "one", {"IMAGE": np.zeros((1, 8, 8), np.uint8)}, answer, answer,
                       "cpu", {}, 1e-4, {})


def test_golden_without_an_answer_fails_with_the_error_and_is_named_by_its_model():
    result = check_golden("pipeline", None, "no answer from 'pipeline' within the 2000 ms deadline")
    assert not result.ok and result.value is None and result.name == "golden:pipeline"
    assert result.reason == "no answer from 'pipeline' within the 2000 ms deadline"
    assert check_golden("m", None).reason == "no answer"


def test_golden_bit_exact_passes():
    case = _pipeline_case()
    answer = {n: o.value for n, o in case.expected["cpu"].outputs.items()}
    result = check_golden("pipeline", [compare_case(case, "cpu", answer)])
    assert result.ok and result.reason == "case 'one': bit-exact"
    assert result.value == {"one": {"bit_exact": True, "outputs": {
        "LABEL": {"ok": True, "max_abs_diff": None}, "PROBS": {"ok": True, "max_abs_diff": 0.0}}}}
    assert result.limit == {"tolerance": {"one": {"LABEL": 0.0, "PROBS": 1e-4}}}


def test_golden_wrong_label_fails_naming_the_output():
    case = _pipeline_case()
    answer = {"LABEL": np.array([[7]], dtype=np.int64), "PROBS": case.expected["cpu"].outputs["PROBS"].value}
    result = check_golden("pipeline", [compare_case(case, "cpu", answer)])
    assert not result.ok and result.name == "golden:pipeline"
    assert result.reason.startswith("case 'one': LABEL differs in 1 of 1 values (first at [0, 0]: 7, golden 1)")
    assert result.value["one"]["outputs"]["LABEL"]["ok"] is False
