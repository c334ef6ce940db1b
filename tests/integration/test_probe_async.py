"""The asyncio ModelHealthValidator (for callers such as a Ray Serve deployment) against a real server."""

from __future__ import annotations

import asyncio

import pytest

from triton_guard.canary.probe import AsyncModelHealthValidator, Health
from triton_guard.server import Ports

pytestmark = pytest.mark.integration


def test_async_validator_reports_a_healthy_server_ready(pipeline_server):
    result = asyncio.run(AsyncModelHealthValidator(pipeline_server.grpc_url, timeout_s=5).check())
    assert result.health is Health.READY, result.reasons
    assert {c.name for c in result.report.checks} >= {"golden:pipeline", "liveness", "headroom", "breakers"}


def test_async_validator_reports_nothing_listening_unreachable():
    url = f"localhost:{Ports.free().grpc}"
    result = asyncio.run(AsyncModelHealthValidator(url, timeout_s=3).check())
    assert result.health is Health.UNREACHABLE and result.health.exit_code == 2
    assert url in result.reasons[0]
