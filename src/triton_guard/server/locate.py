"""Where Triton's pieces are and the environment they run in.

`nvidia-pytriton` ships `tritonserver`, the Python backend and one backend
stub per Python version, but not laid out the way Triton expects. This
module finds tritonserver (the wheel's, or the image's through
$TRITON_GUARD_TRITONSERVER), lays out a backend directory for one run, and
builds the environment and PYTHONPATH overlay the Python backend's stubs
need. It also names the package's own folders: the backends and the chaos
and canary repositories.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from triton_guard import defaults
from triton_guard.errors import ServerError

# Set in the production image, where tritonserver lives in /opt/tritonserver.
ENV_TRITONSERVER = "TRITON_GUARD_TRITONSERVER"
ENV_BACKEND_DIR = "TRITON_GUARD_BACKEND_DIR"

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# The Python-based backends (guard, canary) ship inside the package.
BACKENDS_DIR = PACKAGE_DIR / "backends"
# The `chaos` control model, served as a second repository only with chaos=True.
CHAOS_REPOSITORY = PACKAGE_DIR / "chaos" / "repository"
# The default `canary` model, served as a second repository when DIR has none.
CANARY_REPOSITORY = PACKAGE_DIR / "canary" / "repository"
# The `guard_control` model (the breakers' override), served beside DIR unless it has its own.
CONTROL_REPOSITORY = PACKAGE_DIR / "guard" / "repository"


def _pytriton_root() -> Path | None:
    # find_spec, not import: importing pytriton pulls in its whole client stack.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_tritonserver() -> Path:
    override = os.environ.get(ENV_TRITONSERVER)
    if override:
        return Path(override)
    root = _pytriton_root()
    if root is None:
        raise ServerError(
            "tritonserver not found: install nvidia-pytriton==0.7.0 "
            f"or set {ENV_TRITONSERVER}"
        )
    return root / "tritonserver" / "bin" / "tritonserver"


def build_backend_dir(target: Path, backends_source: Path | None) -> Path:
    """Lay out a Triton backend directory under `target`.

    python/ holds links to the wheel's Python backend and the stub built for
    the running interpreter (Triton looks for the stub next to
    libtriton_python.so); every folder of `backends_source` (guard, canary)
    is linked beside it as a Python-based backend.
    """
    root = _pytriton_root()
    if root is None:
        raise ServerError("nvidia-pytriton is not installed: no Python backend to serve with")
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    # A copy, not a link: Triton refuses a Python-based backend whose
    # libtriton_python.so resolves outside the backend directory. Its
    # libraries are then found through LD_LIBRARY_PATH (server_environment).
    shutil.copy2(dist / "backends" / "python" / "libtriton_python.so", python_dir)
    for source in (dist / "backends" / "python" / "triton_python_backend_utils.py", stub):
        (python_dir / source.name).symlink_to(source)
    if backends_source is not None and backends_source.is_dir():
        for backend in sorted(p for p in backends_source.iterdir() if (p / "model.py").exists()):
            (target / backend.name).symlink_to(backend.resolve(), target_is_directory=True)
    return target


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which the stubs load the right libpython and this venv's packages."""
    env = dict(os.environ if base is None else base)
    lib_dirs = [sysconfig.get_config_var("LIBDIR") or ""]
    root = _pytriton_root()
    if root is not None:
        lib_dirs.append(str(root.parent / "nvidia_pytriton.libs"))
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(d for d in lib_dirs if d)
    # The stub imports packages from the python3 first on PATH.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def stub_python_overlay(target: Path, pythonpath: str) -> Path:
    """A venv for the Python backend's stubs with `pythonpath` before this interpreter's packages.

    The stub's embedded interpreter ignores PYTHONPATH (measured: a stub
    started with PYTHONPATH=<checkout>/src imported the venv's editable
    install instead) but takes its site-packages from the python3 first on
    PATH. So the caller's PYTHONPATH (a checkout under test) reaches the
    stubs through a .pth file of this overlay, whose bin/ goes first on PATH;
    the caller's own site-packages follow. Returns the overlay's bin/.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(getattr(sys, "_base_executable", sys.executable))
    bin_dir = target / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "python3", f"python{version}"):
        (bin_dir / name).symlink_to(base)
    (target / "pyvenv.cfg").write_text(
        f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {sys.version.split()[0]}\n"
    )
    site_dir = target / "lib" / f"python{version}" / "site-packages"
    site_dir.mkdir(parents=True)
    import site

    lines = [os.path.abspath(p) for p in pythonpath.split(os.pathsep) if p]
    lines += [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
    (site_dir / "00-triton-guard-pythonpath.pth").write_text("\n".join(lines) + "\n")
    return bin_dir


def set_chaos_mode(env: dict[str, str], chaos_dir: Path | None) -> dict[str, str]:
    """Point the models' chaos hooks at `chaos_dir`, or, with None, make sure none starts.

    Removing the variable matters: one left in the caller's environment
    would arm the hooks of a server started without --chaos.
    """
    if chaos_dir is None:
        env.pop(defaults.CHAOS_DIR_ENV, None)
    else:
        chaos_dir.mkdir(parents=True, exist_ok=True)
        env[defaults.CHAOS_DIR_ENV] = str(chaos_dir)
    return env

