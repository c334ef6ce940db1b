"""Every error class of triton_guard, each with who raises it and what it means.

Plain Python: importing this module imports nothing beyond the standard
library, so it is safe inside a Triton Python stub and cheap for a CLI.
The one exception is `ClientGuardError`, an InferenceServerException (so a
caller's `except InferenceServerException` keeps catching it): it is defined
on first use (PEP 562), when tritonclient is imported anyway.

Every message is one line for a person. The bases are chosen so that an
`except ValueError` catches bad input and an `except RuntimeError` a server
or tool that did not do its part.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (this module is imported everywhere)
if TYPE_CHECKING:
    import grpc

    from triton_guard.canary.probe import HealthResult
    from triton_guard.guard.failures import Failure

# --- the guard (triton_guard.guard, triton_guard.backends) --------------------


class ConfigError(ValueError):
    """guard.config (guard and drift parameters, read by the backends): a value that cannot be used; names it."""


class SettingsConflict(ConfigError):
    """guard.shared_state: two guard models of one upstream with different breaker settings."""


class OverrideError(ValueError):
    """guard.override (`triton-guard breaker`, the guard_control model): an override it will not make; nothing changed."""


class CallTimedOut(Exception):
    """guard.workers: a call did not return within its time; it still holds its bulkhead worker."""


class StandInModelException(Exception):
    """backends.stand_in (outside Triton): what pb_utils.TritonModelException is inside a stub: a model's failed load."""


class ModelConfigError(ValueError):
    """model_config: a config.pbtxt that cannot be read or does not fit its upstream; the message names the file."""


class GuardRefused(ValueError):
    """guard_writer (`triton-guard guard`, `unguard`): it will not write; one line, and nothing was written."""


class NotServed(ModelConfigError):
    """model_source: the server does not answer for this model yet (not up, or not loaded): ask again later."""


class Unreadable(ValueError):
    """config_edit: a config.pbtxt text its scanner does not read; edit the whole config instead."""


# --- the canary and its goldens (triton_guard.canary) ------------------------


class CanaryConfigError(ValueError):
    """canary.config: a canary parameter or option that cannot be used; the message names it."""


class NvmlUnavailable(RuntimeError):
    """canary.nvml: NVML cannot give per-process GPU memory (nvidia-ml-py not installed, no driver); says which."""


class GoldenError(ValueError):
    """canary.goldens and their readers: an unusable golden (file, tensor or recording); the message names it."""


class RecordRefused(Exception):
    """`triton-guard goldens record` (canary.record): the server answered, but not with something to record (exit 1)."""


class RecordUsage(Exception):
    """`triton-guard goldens record` (canary.record): bad arguments, an unusable inputs file, or no server (exit 2)."""


class InputsError(ValueError):
    """inputs: a file that does not hold usable named tensors; the message names the file and the tensor."""


# --- the drift monitor (triton_guard.drift) ----------------------------------


class DriftReferenceError(ValueError):
    """drift.monitor and the drift tap: a drift reference that cannot be built or used; the message names the file."""


class RecordError(ValueError):
    """`triton-guard drift record` (drift.record): why a reference cannot be recorded; one line, nothing written."""


# --- fault injection (triton_guard.chaos) ------------------------------------


class FaultError(ValueError):
    """chaos.protocol and chaos.command: a fault or command that cannot be applied; the message says why."""


# --- the server and the tools around it ---------------------------------------


class ServerError(RuntimeError):
    """server (LocalServer, locating tritonserver, the API key): the server could not be started."""


class PerfAnalyzerError(RuntimeError):
    """perf: perf_analyzer wrote no measurement; `unstable` when only the stability criterion failed."""

    def __init__(self, message: str, unstable: bool = False) -> None:
        super().__init__(message)
        self.unstable = unstable


# --- the caller's side (triton_guard.client) ----------------------------------


class TritonNotReady(RuntimeError):
    """client.health.CanaryHealthCheck: the canary said not ready, or could not be asked; the message says why.

    Only the message crosses a process boundary (Ray Serve pickles the
    exception of a failed health check): `result` is None on the other side.
    """

    def __init__(self, message: str, result: HealthResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def _define_client_guard_error() -> type:
    from tritonclient.utils import InferenceServerException

    class ClientGuardError(InferenceServerException):
        """client.guard.GuardedClient: a call with no answer (refused by the guard, timed out, failed at the server).

        code: the gRPC status (UNAVAILABLE for every refusal and timeout, as the
        in-server guard answers); http_status: the same as an HTTP status.
        failure: what went wrong, as the in-server guard names it (CLIENT_ERROR:
        the caller's mistake, which never counts against the server).
        rejected: "open", "half_open_full" or "overloaded" when no call was made.
        """

        def __init__(
            self,
            message: str,
            code: grpc.StatusCode,
            *,
            failure: Failure | None = None,
            rejected: str | None = None,
            debug_details: str | None = None,
        ) -> None:
            from triton_guard.client.guard import HTTP_STATUS  # the gRPC -> HTTP table lives beside its user

            super().__init__(message, status=str(code), debug_details=debug_details)
            self.code = code
            self.http_status = HTTP_STATUS.get(code, 500)
            self.failure = failure
            self.rejected = rejected

    ClientGuardError.__module__ = __name__
    ClientGuardError.__qualname__ = "ClientGuardError"
    return ClientGuardError


def __getattr__(name: str) -> type:
    # PEP 562: ClientGuardError needs tritonclient, which a stub or a CLI command need not import.
    if name != "ClientGuardError":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # setdefault is atomic: threads that race here all get the first class defined.
    return globals().setdefault("ClientGuardError", _define_client_guard_error())


__all__ = [
    "CallTimedOut",
    "CanaryConfigError",
    "ClientGuardError",
    "ConfigError",
    "DriftReferenceError",
    "FaultError",
    "GoldenError",
    "GuardRefused",
    "InputsError",
    "ModelConfigError",
    "NotServed",
    "OverrideError",
    "PerfAnalyzerError",
    "RecordError",
    "RecordRefused",
    "RecordUsage",
    "ServerError",
    "SettingsConflict",
    "StandInModelException",
    "TritonNotReady",
    "Unreadable",
]
