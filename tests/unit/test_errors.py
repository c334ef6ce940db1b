"""Errors live in one module (triton_guard/errors.py), keep their bases, and shadow no built-in."""

from __future__ import annotations

import ast
import builtins
import subprocess
import sys
from pathlib import Path

import triton_guard
from triton_guard import errors

PACKAGE_DIR = Path(triton_guard.__file__).parent


def _top_level_classes():
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                yield path, node


def _base_names(node: ast.ClassDef) -> set[str]:
    return {base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "") for base in node.bases}


def test_no_error_class_is_defined_outside_errors_py():
    exception_bases = {"Exception", "ValueError", "RuntimeError", "InferenceServerException"} | set(errors.__all__)
    elsewhere = [
        f"{path.relative_to(PACKAGE_DIR)}:{node.lineno} {node.name}"
        for path, node in _top_level_classes()
        if path.name != "errors.py" and _base_names(node) & exception_bases
    ]
    assert elsewhere == []


def test_every_error_says_who_raises_it_on_its_first_line():
    for name in errors.__all__:
        error = getattr(errors, name)
        assert issubclass(error, Exception), name
        who, _, meaning = (error.__doc__ or "").strip().splitlines()[0].partition(": ")
        assert who and meaning, f"{name}: 'who raises it: what it means' on the docstring's first line"
        assert error.__module__ == "triton_guard.errors", name


def test_bases_keep_what_each_except_caught():
    from tritonclient.utils import InferenceServerException

    for name in ("ConfigError", "ModelConfigError", "GuardRefused", "CanaryConfigError", "GoldenError", "InputsError",
                 "DriftReferenceError", "RecordError", "FaultError"):
        assert issubclass(getattr(errors, name), ValueError), name
    for name in ("ServerError", "PerfAnalyzerError", "TritonNotReady"):
        assert issubclass(getattr(errors, name), RuntimeError), name
    assert issubclass(errors.SettingsConflict, errors.ConfigError)
    assert issubclass(errors.ClientGuardError, InferenceServerException)
    # The modules that raise them hand out the same class (one definition).
    from triton_guard.client.guard import ClientGuardError
    from triton_guard.guard.config import ConfigError
    from triton_guard.server import ServerError

    assert (ClientGuardError, ConfigError, ServerError) == (errors.ClientGuardError, errors.ConfigError, errors.ServerError)


def test_the_drift_reference_error_no_longer_shadows_the_builtin():
    assert not hasattr(errors, "ReferenceError")
    from triton_guard.drift import monitor

    assert "ReferenceError" not in vars(monitor)


def test_no_module_level_name_shadows_a_builtin():
    shadowing = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [target.id for target in node.targets if isinstance(target, ast.Name)]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [(alias.asname or alias.name).split(".")[0] for alias in node.names]
            else:
                continue
            shadowing += [f"{path.relative_to(PACKAGE_DIR)}:{node.lineno} {name}" for name in names
                          if not name.startswith("__") and hasattr(builtins, name)]
    assert shadowing == []


def test_importing_the_errors_imports_no_tritonclient():
    # errors.py is imported inside every Triton stub and by every CLI command.
    code = "import sys, triton_guard.errors; print(sorted(m for m in ('tritonclient', 'grpc', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
