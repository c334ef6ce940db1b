"""triton-guard: in-server guards that keep a Triton Inference Server pipeline honest.

The public Python surface is the names below (`__all__`); import them from
here, `from triton_guard import GuardedClient`:

* the errors, every one defined in triton_guard.errors;
* the caller's side: `GuardedClient` (an asyncio guard over
  tritonclient.grpc.aio) with its settings `GuardConfig` and its
  `CircuitBreaker`; `CanaryHealthCheck`, `ModelHealthValidator` and
  `AsyncModelHealthValidator` (ask the server's canary; `Health`,
  `HealthResult` are their answer);
* `LocalServer`, `Ports`: run a real tritonserver from the wheels;
* `GuardedUpstream`: the guard as a library call from your own Triton Python
  model. It exists only inside a Triton Python stub (it imports
  triton_python_backend_utils); anywhere else, importing it raises an
  ImportError that says so. It is importable by name but left out of
  `__all__`, so `from triton_guard import *` works outside Triton too.

Beside them, the `triton-guard` command, the `guard` and `canary` backends
(`triton-guard backend-dir`), their config.pbtxt parameters and the defaults
in triton_guard.defaults are the outside contract. Everything else (every
other module and name) is internal and may change without notice.

Importing this package is cheap: only the errors module is imported with it; every
other name is imported on first use (PEP 562), so `import triton_guard`
pulls in no numpy, tritonclient or torch.
"""

from __future__ import annotations

from triton_guard import errors as _errors

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first use.
_LAZY = {
    **dict.fromkeys(_errors.__all__, "triton_guard.errors"),  # every error (ClientGuardError needs tritonclient)
    "GuardConfig": "triton_guard.guard.config",
    "CircuitBreaker": "triton_guard.guard.breaker",
    "GuardedClient": "triton_guard.client.guard",
    "CanaryHealthCheck": "triton_guard.client.health",
    "ModelHealthValidator": "triton_guard.canary.probe",
    "AsyncModelHealthValidator": "triton_guard.canary.probe",
    "Health": "triton_guard.canary.probe",
    "HealthResult": "triton_guard.canary.probe",
    "LocalServer": "triton_guard.server",
    "Ports": "triton_guard.server",
    "GuardedUpstream": "triton_guard.backends.bls",  # the library placement: inside a Triton stub only
}
_STUB_ONLY = "triton_python_backend_utils"
_STUB_ONLY_NAMES = frozenset({"GuardedUpstream"})  # need _STUB_ONLY: importable inside a Triton stub only


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(_LAZY[name])
    except ModuleNotFoundError as exc:
        if exc.name != _STUB_ONLY:
            raise
        raise ImportError(
            f"triton_guard.{name} works only inside a Triton Python model: it needs the stub's {_STUB_ONLY} "
            "(use it from a model.py that Triton's Python backend loads)", name=name) from exc
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# The stub-only name stays out of `__all__`: a star import must work anywhere.
__all__ = sorted([*(name for name in _LAZY if name not in _STUB_ONLY_NAMES), "__version__"])
