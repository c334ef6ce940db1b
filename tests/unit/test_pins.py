"""triton_guard.pins: reading pins.toml and comparing a runtime against it."""

from importlib import resources
from pathlib import Path

import pytest

from triton_guard.pins import (
    Mismatch,
    _parse_flat_toml,
    compare_runtime,
    cudnn_version_string,
    load_pins,
    observe_runtime,
)

PINS = load_pins()
MATCHING = {"torch": "2.7.1+cu126", "cuda": "12.6", "cudnn": "9.5.1", "tritonserver": "2.51.0"}


def test_pins_agree_with_each_other():
    container, torch = PINS.container, PINS.image_torch
    assert container.base_image == f"nvcr.io/nvidia/tritonserver:{container.release}-py3"
    assert torch.cuda == container.cuda
    assert torch.cuda_build == "cu" + torch.cuda.replace(".", "")
    assert PINS.clients.tritonclient == container.triton_server
    assert PINS.ci_torch.build == "cpu"


def test_expected_runtime_is_what_the_image_reports():
    assert PINS.expected_runtime() == MATCHING


def test_fallback_reader_reads_pins_toml_as_tomllib_does():
    tomllib = pytest.importorskip("tomllib")
    text = resources.files("triton_guard").joinpath("pins.toml").read_text(encoding="utf-8")
    assert _parse_flat_toml(text) == tomllib.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '[t]\nnumber = 1\n',
        '[a.b]\nk = "v"\n',
        '[t]\nk = "a\\"b"\n',
        'k = "outside a table"\n',
        '[t]\nk = "v"\nk = "again"\n',
        '[t]\n[t]\n',
    ],
    ids=["non-string", "dotted-table", "escape", "no-table", "duplicate-key", "duplicate-table"],
)
def test_fallback_reader_rejects_what_it_does_not_understand(text):
    with pytest.raises(ValueError):
        _parse_flat_toml(text)


def test_pyproject_pins_match():
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    assert f"tritonclient[grpc,http]=={PINS.clients.tritonclient}" in dependencies
    assert f"nvidia-pytriton=={PINS.clients.nvidia_pytriton}" in dependencies


def test_matching_runtime_has_no_mismatches():
    assert compare_runtime(PINS, MATCHING) == []


def test_mismatches_are_reported_in_fixed_order():
    observed = {**MATCHING, "tritonserver": "2.50.0", "torch": "2.13.0+cpu"}
    assert compare_runtime(PINS, observed) == [
        Mismatch("torch", "2.7.1+cu126", "2.13.0+cpu"),
        Mismatch("tritonserver", "2.51.0", "2.50.0"),
    ]


def test_unavailable_is_a_mismatch():
    observed = {**MATCHING, "cuda": None, "cudnn": None}
    assert compare_runtime(PINS, observed) == [
        Mismatch("cuda", "12.6", None),
        Mismatch("cudnn", "9.5.1", None),
    ]


def test_only_observed_names_are_compared():
    assert compare_runtime(PINS, {"torch": "2.7.1+cu126"}) == []


def test_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="triton"):
        compare_runtime(PINS, {"triton": "3.3.1"})


@pytest.mark.parametrize(("code", "version"), [(90501, "9.5.1"), (91002, "9.10.2"), (8907, "8.9.7")])
def test_cudnn_version_string(code, version):
    assert cudnn_version_string(code) == version


def test_observe_runtime_reads_torch_without_initialising_cuda():
    torch = pytest.importorskip("torch")
    observed = observe_runtime()
    assert observed["torch"] == torch.__version__
    assert observed["cuda"] == torch.version.cuda
    assert set(observed) == {"torch", "cuda", "cudnn"}
    assert not torch.cuda.is_initialized()
