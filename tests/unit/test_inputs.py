"""Named tensors from KServe v2 JSON bodies and .npz files."""

import json
import re

import numpy as np
import pytest

from triton_guard.inputs import InputsError, load_inputs


def write(tmp_path, body, name="body.json"):
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return path


def test_kserve_json_gives_typed_arrays_of_the_declared_shape(tmp_path):
    path = write(tmp_path, {"inputs": [
        {"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": ["héllo", "ab"]},
        {"name": "IDS", "shape": [1, 2], "datatype": "INT64", "data": [[7, 8]]},
    ]})
    arrays = load_inputs(path)
    assert arrays["INPUT0"].dtype == np.float32 and arrays["INPUT0"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert arrays["TEXT"].dtype == np.object_ and arrays["TEXT"].tolist() == [["héllo".encode()], [b"ab"]]
    assert arrays["IDS"].dtype == np.int64 and arrays["IDS"].shape == (1, 2)


def test_npz_text_becomes_bytes_objects(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, X=np.zeros((2, 3), np.float16), TEXT=np.array([["a"], ["bc"]]))
    arrays = load_inputs(path)
    assert arrays["X"].dtype == np.float16 and arrays["X"].shape == (2, 3)
    assert arrays["TEXT"].dtype == np.object_ and arrays["TEXT"].tolist() == [[b"a"], [b"bc"]]


def test_npz_numbers_come_in_native_byte_order_with_their_values(tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, X=np.array([1.5, -2.0], dtype=">f4"), N=np.array([3, 70000], dtype=">i4"))
    arrays = load_inputs(path)
    assert arrays["X"].dtype == np.dtype("=f4") and arrays["X"].tolist() == [1.5, -2.0]
    assert arrays["N"].dtype == np.dtype("=i4") and arrays["N"].tolist() == [3, 70000]


@pytest.mark.parametrize("array", [np.zeros(2, np.complex64), np.array(["2026-12-05"], dtype="datetime64[D]")])
def test_an_npz_array_triton_cannot_carry_is_refused_naming_it(tmp_path, array):
    path = tmp_path / "in.npz"
    np.savez(path, OK=np.zeros(2, np.float32), ODD=array)
    with pytest.raises(InputsError, match=re.escape(f"array 'ODD' is {array.dtype}, which no Triton datatype carries")):
        load_inputs(path)


@pytest.mark.parametrize("body, words", [
    ({"inputs": []}, "KServe v2 request body"),
    ({"inputs": [{"name": "X", "shape": [2], "datatype": "FP32"}]}, "lacks data"),
    ({"inputs": [{"name": "X", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, "holds 3 values, data has 2"),
    ({"inputs": [{"name": "X", "shape": [1], "datatype": "FP33", "data": [1]}]}, "unknown datatype 'FP33'"),
    ({"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": ["x"]}]}, "data is not INT32"),
    ({"inputs": [{"name": "X", "shape": [-1], "datatype": "INT32", "data": [1]}]}, "non-negative integers"),
])
def test_a_bad_body_is_refused_naming_the_tensor(tmp_path, body, words):
    with pytest.raises(InputsError, match=words):
        load_inputs(write(tmp_path, body))


def test_not_json_and_missing_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InputsError, match="not JSON"):
        load_inputs(bad)
    with pytest.raises(InputsError, match="cannot read"):
        load_inputs(tmp_path / "absent.json")
