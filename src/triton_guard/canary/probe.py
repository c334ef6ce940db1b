"""ModelHealthValidator: the canary, asked from outside the server.

The incident write-up's validator, with the checks moved into the server (the
`canary` model) so every client gets them; this side only asks, bounds the
wait, and says what it means. `triton-guard probe` (a Kubernetes exec
readinessProbe) uses it; `AsyncModelHealthValidator` is for asyncio callers
such as a Ray Serve deployment.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from triton_guard import defaults
from triton_guard.canary.report import CanaryReport


class Health(enum.Enum):
    READY = "ready"
    NOT_READY = "not_ready"
    UNREACHABLE = "unreachable"

    @property
    def exit_code(self) -> int:
        return {Health.READY: 0, Health.NOT_READY: 1, Health.UNREACHABLE: 2}[self]


@dataclass
class HealthResult:
    health: Health
    reasons: list[str]  # one per failed check, or why the canary could not be asked
    report: CanaryReport | None = None
    latency_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.health is Health.READY

    def to_dict(self) -> dict[str, Any]:
        return {
            "health": self.health.value,
            "ready": self.ready,
            "reasons": self.reasons,
            "latency_s": self.latency_s,
            "report": self.report.to_dict() if self.report else None,
        }


def _request_inputs(module, options: Mapping[str, Any] | None):
    import numpy as np

    if not options:
        return []
    tensor = module.InferInput("OPTIONS", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([json.dumps(dict(options)).encode()], dtype=object))
    return [tensor]


def _from_response(result, latency_s: float) -> HealthResult:
    report = CanaryReport.from_dict(json.loads(result.as_numpy("REPORT")[0]))
    if report.ready:
        return HealthResult(Health.READY, [], report, latency_s)
    return HealthResult(Health.NOT_READY, [f"{c.name}: {c.reason}" for c in report.failed], report, latency_s)


def _from_error(exc, url: str, timeout_s: float, latency_s: float) -> HealthResult:
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if "UNAVAILABLE" in status:  # nothing listening, or the connection broke
        return HealthResult(Health.UNREACHABLE, [f"server at {url} unreachable: {message}"], latency_s=latency_s)
    if "DEADLINE_EXCEEDED" in status:
        return HealthResult(
            Health.NOT_READY, [f"canary: no answer within {timeout_s:g} s"], latency_s=latency_s
        )
    return HealthResult(Health.NOT_READY, [f"canary: {message}"], latency_s=latency_s)


@dataclass(eq=False)
class ModelHealthValidator:
    """Asks the server's `canary` model whether it is ready, within `timeout_s`."""

    url: str = defaults.DEFAULT_URL
    timeout_s: float = defaults.PROBE_TIMEOUT_S
    canary_model: str = defaults.CANARY_MODEL
    options: Mapping[str, Any] | None = None  # the canary's OPTIONS for this check (CanaryConfig.with_call_options)

    def check(self) -> HealthResult:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        started = time.monotonic()
        try:
            client = grpcclient.InferenceServerClient(self.url)
            try:
                result = client.infer(
                    self.canary_model,
                    _request_inputs(grpcclient, self.options),
                    client_timeout=self.timeout_s,
                )
            finally:
                client.close()
        except InferenceServerException as exc:
            return _from_error(exc, self.url, self.timeout_s, time.monotonic() - started)
        return _from_response(result, time.monotonic() - started)


class AsyncModelHealthValidator(ModelHealthValidator):
    """The same, for asyncio callers (tritonclient.grpc.aio)."""

    async def check(self) -> HealthResult:  # type: ignore[override]
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as aioclient
        from tritonclient.utils import InferenceServerException

        started = time.monotonic()
        client = aioclient.InferenceServerClient(self.url)
        try:
            result = await client.infer(
                self.canary_model,
                _request_inputs(grpcclient, self.options),
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            return _from_error(exc, self.url, self.timeout_s, time.monotonic() - started)
        finally:
            await client.close()
        return _from_response(result, time.monotonic() - started)
