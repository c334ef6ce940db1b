"""A health check for an orchestrator's replica: ask the server's canary, fail unless it is ready.

Ray Serve calls a deployment's `check_health` and replaces the replica when it
raises; any orchestrator with an async health hook can do the same:

    self.triton_health = CanaryHealthCheck("127.0.0.1:8001")
    async def check_health(self):
        await self.triton_health()
"""

from __future__ import annotations

from triton_guard.canary.probe import AsyncModelHealthValidator, HealthResult
from triton_guard.errors import TritonNotReady


class CanaryHealthCheck(AsyncModelHealthValidator):
    """`await health_check()`: the canary's HealthResult when ready, else TritonNotReady saying why.

    Made like AsyncModelHealthValidator (url, timeout_s, canary_model,
    options), whose `check()` answers without raising; `last` is the latest answer.
    """

    last: HealthResult | None = None

    async def __call__(self) -> HealthResult:
        result = await self.check()
        self.last = result
        if not result.ready:
            reasons = "; ".join(result.reasons)
            raise TritonNotReady(f"triton at {self.url} {result.health.value}: {reasons}", result)
        return result
