"""CanaryHealthCheck: a ready canary passes, anything else raises TritonNotReady with the canary's reasons."""

from __future__ import annotations

import asyncio

import pytest

from triton_guard.canary.probe import Health, HealthResult
from triton_guard.client.health import CanaryHealthCheck
from triton_guard.errors import TritonNotReady


class Answering(CanaryHealthCheck):
    """The health check with the canary's answer given, not asked over gRPC."""

    def __init__(self, answer: HealthResult) -> None:
        super().__init__("triton:8001", timeout_s=1.0)
        self.answer = answer

    async def check(self) -> HealthResult:
        return self.answer


def test_a_ready_canary_passes_and_is_kept():
    answer = HealthResult(Health.READY, [])
    check = Answering(answer)
    assert asyncio.run(check()) is answer
    assert check.last is answer


@pytest.mark.parametrize("health", [Health.NOT_READY, Health.UNREACHABLE])
def test_anything_else_raises_with_the_reasons(health):
    answer = HealthResult(health, ["golden: digits differs", "headroom: 3% free"])
    check = Answering(answer)
    with pytest.raises(TritonNotReady) as raised:
        asyncio.run(check())
    assert str(raised.value) == f"triton at triton:8001 {health.value}: golden: digits differs; headroom: 3% free"
    assert raised.value.result is answer and check.last is answer


def test_it_is_made_like_the_validator():
    check = CanaryHealthCheck("host:9001", 2.5, "my_canary", {"strict_pins": True})
    assert (check.url, check.timeout_s, check.canary_model, check.options) == (
        "host:9001", 2.5, "my_canary", {"strict_pins": True})
