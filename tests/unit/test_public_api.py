"""The public surface (triton_guard.__all__): every name resolves, and importing the package stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest

import triton_guard

STUB_ONLY = {"GuardedUpstream"}  # needs triton_python_backend_utils, which only a Triton stub has


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("name", sorted(triton_guard.__all__))
def test_every_public_name_resolves(name):
    value = getattr(triton_guard, name)
    assert value is not None
    if name != "__version__":
        # Defined in triton_guard's own modules, not a third party's.
        assert value.__module__.startswith("triton_guard."), value.__module__
    assert name in dir(triton_guard)


def test_a_star_import_works_outside_triton():
    names = _run("from triton_guard import *; print(sorted(k for k in dir() if not k.startswith('_')))")
    assert "GuardedClient" in names and "GuardedUpstream" not in names


def test_the_stub_only_name_is_importable_by_name_but_not_starred():
    assert STUB_ONLY.isdisjoint(triton_guard.__all__)
    assert STUB_ONLY <= set(dir(triton_guard))


def test_every_error_is_public():
    from triton_guard import errors

    assert set(errors.__all__) <= set(triton_guard.__all__)


def test_the_library_placement_outside_triton_is_a_clear_import_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "triton_python_backend_utils", raising=False)
    monkeypatch.delitem(sys.modules, "triton_guard.backends.bls", raising=False)
    monkeypatch.delitem(vars(triton_guard), "GuardedUpstream", raising=False)  # hasattr would raise the ImportError
    with pytest.raises(ImportError, match="only inside a Triton Python model.*triton_python_backend_utils"):
        from triton_guard import GuardedUpstream  # noqa: F401


def test_the_library_placement_inside_a_stub_is_the_bls_guarded_upstream():
    # A fresh interpreter with a stand-in for the stub's module, so no test's imports are bound to it.
    out = _run(
        "import sys, types\n"
        "fake = types.ModuleType('triton_python_backend_utils')\n"
        "fake.__getattr__ = lambda name: type(name, (), {})\n"
        "sys.modules['triton_python_backend_utils'] = fake\n"
        "from triton_guard import GuardedUpstream\n"
        "import triton_guard.backends.bls as bls\n"
        "print(GuardedUpstream is bls.GuardedUpstream)\n"
    )
    assert out == "True"


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'GuardedUpstreams'"):
        triton_guard.GuardedUpstreams  # noqa: B018
    with pytest.raises(ImportError):
        from triton_guard import NoSuchThing  # noqa: F401


def test_submodules_still_import_through_the_package():
    from triton_guard import defaults

    assert defaults.__name__ == "triton_guard.defaults"


def test_importing_the_package_imports_no_heavy_dependency():
    # Every stub and every CLI command imports triton_guard: it must stay cheap.
    loaded = _run("import sys, triton_guard; "
                  "print(sorted(m for m in ('numpy', 'tritonclient', 'grpc', 'torch', 'scipy') if m in sys.modules))")
    assert loaded == "[]"
