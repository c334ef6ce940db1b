"""Pinned versions (pins.toml) and the check of a running image against them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:
    # Python 3.10 (the image's interpreter) has no tomllib, and the image
    # installs nothing it does not need; pins.toml keeps to a subset that
    # _parse_flat_toml reads. pyproject.toml only ships *.toml package data,
    # so an .ini file for configparser would not reach the installed package.
    tomllib = None


@dataclass(frozen=True)
class ContainerPins:
    release: str
    base_image: str
    triton_server: str
    cuda: str
    cudnn: str
    python: str


@dataclass(frozen=True)
class ImageTorchPins:
    version: str
    cuda_build: str
    cuda: str
    cudnn: str

    @property
    def local_version(self) -> str:
        """What torch.__version__ says for this build, e.g. "2.7.1+cu126"."""
        return f"{self.version}+{self.cuda_build}"


@dataclass(frozen=True)
class ClientPins:
    tritonclient: str
    nvidia_pytriton: str


@dataclass(frozen=True)
class CiTorchPins:
    version: str
    build: str


@dataclass(frozen=True)
class Pins:
    container: ContainerPins
    image_torch: ImageTorchPins
    clients: ClientPins
    ci_torch: CiTorchPins

    def expected_runtime(self) -> dict[str, str]:
        """What observe_runtime() (plus the server's version) should see in the image."""
        return {
            "torch": self.image_torch.local_version,
            "cuda": self.image_torch.cuda,
            "cudnn": self.image_torch.cudnn,
            "tritonserver": self.container.triton_server,
        }


@dataclass(frozen=True)
class Mismatch:
    name: str
    expected: str
    observed: str | None


def load_pins() -> Pins:
    text = resources.files("triton_guard").joinpath("pins.toml").read_text(encoding="utf-8")
    tables = tomllib.loads(text) if tomllib is not None else _parse_flat_toml(text)
    # ** rejects missing and unknown keys, so pins.toml and these classes stay in step.
    return Pins(
        container=ContainerPins(**tables["container"]),
        image_torch=ImageTorchPins(**tables["image_torch"]),
        clients=ClientPins(**tables["clients"]),
        ci_torch=CiTorchPins(**tables["ci_torch"]),
    )


_BLANK_OR_COMMENT = re.compile(r"\s*(#.*)?")
_TABLE_HEADER = re.compile(r"\s*\[([A-Za-z0-9_-]+)\]\s*(#.*)?")
_STRING_PAIR = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*"([^"\\]*)"\s*(#.*)?')


def _parse_flat_toml(text: str) -> dict[str, dict[str, str]]:
    """Read the TOML subset pins.toml uses: [table] headers and key = "string" lines.

    Anything else raises ValueError rather than being misread.
    """
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if _BLANK_OR_COMMENT.fullmatch(line):
            continue
        if header := _TABLE_HEADER.fullmatch(line):
            name = header.group(1)
            if name in tables:
                raise ValueError(f"line {number}: table [{name}] defined twice")
            current = tables[name] = {}
            continue
        pair = _STRING_PAIR.fullmatch(line)
        if pair is None:
            raise ValueError(f"line {number}: not a [table] or key = \"string\" line: {line!r}")
        if current is None:
            raise ValueError(f"line {number}: key outside a [table]")
        key, value = pair.group(1), pair.group(2)
        if key in current:
            raise ValueError(f"line {number}: key {key!r} defined twice")
        current[key] = value
    return tables


def compare_runtime(pins: Pins, observed: dict[str, str | None]) -> list[Mismatch]:
    """Mismatches between observed versions and the pins, in a fixed order.

    Only keys present in `observed` are compared (observe_runtime() cannot
    know the server's version; a caller adds "tritonserver" from server
    metadata). None means "not available" and never matches a pin.
    """
    expected = pins.expected_runtime()
    unknown = observed.keys() - expected.keys()
    if unknown:
        raise ValueError(f"unknown runtime names {sorted(unknown)}; known: {sorted(expected)}")
    return [
        Mismatch(name, want, observed[name])
        for name, want in expected.items()
        if name in observed and observed[name] != want
    ]


def cudnn_version_string(code: int) -> str:
    """torch.backends.cudnn.version()'s integer as "major.minor.patch"."""
    # cuDNN 9 encodes major*10000 + minor*100 + patch; cuDNN 8 and older used major*1000.
    major_unit = 10_000 if code >= 90_000 else 1_000
    major, rest = divmod(code, major_unit)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def observe_runtime() -> dict[str, str | None]:
    """torch, CUDA and cuDNN versions of this process; None where unavailable.

    Creates no CUDA context: torch.version.cuda is a build constant, and (in
    the pinned torch) cudnn.version() asks the cuDNN library only, no device.
    """
    try:
        import torch
    except ImportError:
        return {"torch": None, "cuda": None, "cudnn": None}
    cudnn_code = torch.backends.cudnn.version()  # None on CPU builds
    return {
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": None if cudnn_code is None else cudnn_version_string(cudnn_code),
    }
