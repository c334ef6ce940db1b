"""A health check for an orchestrator's replica: ask the server's canary, fail unless it is ready.

Ray Serve calls a deployment's `check_health` and replaces the replica when it
raises; any orchestrator with an async health hook can do the same:

    self.triton_health = CanaryHealthCheck("127.0.0.1:8001")
    async def check_health(self):
        await self.triton_health()
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from triton_guard import defaults
from triton_guard.canary.probe import AsyncModelHealthValidator, HealthResult
from triton_guard.errors import TritonNotReady


class CanaryHealthCheck:
    """`await check()`: returns the canary's HealthResult when ready, raises TritonNotReady otherwise."""

    def __init__(
        self,
        url: str = defaults.DEFAULT_URL,
        timeout_s: float = defaults.PROBE_TIMEOUT_S,
        canary_model: str = defaults.CANARY_MODEL,
        options: Mapping[str, Any] | None = None,
        validator: AsyncModelHealthValidator | None = None,
    ) -> None:
        self.validator = validator or AsyncModelHealthValidator(url, timeout_s, canary_model, options)
        self.last: HealthResult | None = None

    async def __call__(self) -> HealthResult:
        result = await self.validator.check()
        self.last = result
        if not result.ready:
            reasons = "; ".join(result.reasons)
            raise TritonNotReady(f"triton at {self.validator.url} {result.health.value}: {reasons}", result)
        return result
