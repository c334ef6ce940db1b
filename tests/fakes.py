"""Test doubles shared by the unit tests."""

from __future__ import annotations


class FakeClock:
    """Monotonic seconds that move only when a test says so (no sleeps)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
