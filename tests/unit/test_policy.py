"""guard/policy.py: the decisions of a guarded call, with no thread, file or Triton (the runtimes: test_guard_logic, test_client_guard)."""

from __future__ import annotations

import pytest

from tests import fakes
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.failures import Failure
from triton_guard.guard.policy import Code, GuardEvents, GuardPolicy
from triton_guard.guard.record import Permit, State
from triton_guard.guard.store import MemoryStore


class Events(GuardEvents):
    def __init__(self):
        self.log = []

    def rejected(self, reason, requests=1):
        self.log.append(("rejected", reason, requests))

    def completed(self, duration_s, failure, requests=1):
        self.log.append(("completed", failure, requests))

    def transitioned(self, transition):
        self.log.append(("transitioned", transition.to_state))


@pytest.fixture
def clock():
    return fakes.FakeClock(100.0)


def policy(clock, label=None, **settings):
    config = GuardConfig(**{"timeout_ms": 2000, "failure_threshold": 2, **settings})
    return GuardPolicy("m", config, CircuitBreaker("m", config, MemoryStore(), clock), events=Events(), clock=clock,
                       label=label)  # fmt: skip


def test_a_request_whose_deadline_passed_is_answered_without_asking_the_breaker_and_counts(clock):
    p = policy(clock)
    result = p.admit(3, deadline_s=99.0)
    assert result.code is Code.UNAVAILABLE and result.failure is Failure.TIMEOUT
    assert result.message == "model 'm' did not answer within timeout_ms=2000"
    assert p.events.log == [("rejected", "deadline", 3), ("completed", Failure.TIMEOUT, 3), ("transitioned", State.OPEN)]


def test_the_time_left_is_the_timeout_or_less_when_the_callers_deadline_comes_first(clock):
    p = policy(clock)
    assert p.time_left(None, 100.0) == 2.0
    assert p.time_left(100.5, 100.0) == 0.5
    assert p.time_left(200.0, 100.0) == 2.0
    assert p.time_left(99.0, 100.0) == 0.0


def test_outcomes_become_answers_and_messages(clock):
    p = policy(clock, failure_threshold=100)
    assert p.finished(p.admit(), 1, 0.01, value="Y") == (Code.OK, "Y", "", None, None)
    timeout = p.finished(p.admit(), 1, 2.0, Failure.TIMEOUT, "Request timeout expired")
    assert timeout.message == "model 'm' did not answer within timeout_ms=2000 (Request timeout expired)"
    failed = p.finished(p.admit(), 1, 0.01, Failure.UPSTREAM_ERROR, "CUDA error")
    assert (failed.code, failed.message) == (Code.INTERNAL, "upstream model 'm' failed: CUDA error")
    mistake = p.finished(p.admit(), 1, 0.01, Failure.CLIENT_ERROR, "unexpected shape")
    assert (mistake.code, mistake.message) == (Code.INVALID_ARG, "unexpected shape")  # the server's own words
    assert p.breaker.snapshot().consecutive_failures == 0  # the mistake was the upstream answering right


def test_a_split_batch_defers_the_clients_mistake_to_the_retries_but_decides_a_trial(clock):
    p = policy(clock, failure_threshold=1, recovery_ms=1000)
    p.finished(p.admit(), 1, 0.01, Failure.UPSTREAM_ERROR, "boom")
    clock.advance(1)
    trial = p.admit(4)
    assert p.finished(trial, 4, 0.01, Failure.CLIENT_ERROR, "bad input", split=True) is None
    assert p.breaker.snapshot().state is State.CLOSED  # the upstream answered: the trial succeeded


def test_the_bulkhead_refusing_gives_the_permit_back_and_blames_nobody(clock):
    p = policy(clock)
    permit = p.admit(2)
    result = p.overloaded(permit, 2, inflight=8)
    assert result.rejected == "overloaded" and result.message == "model 'm' overloaded: 8 calls in flight (max_inflight=8)"
    assert permit.spent and p.events.log == [("rejected", "overloaded", 2)]
    assert p.breaker.snapshot().consecutive_failures == 0


def test_one_policy_speaks_for_the_client_side_guard_too(clock):
    p = policy(clock, label="model 'm' at triton:8001", failure_threshold=1)
    p.finished(p.admit(), 1, 0.01, Failure.TIMEOUT)
    refused = p.admit()
    assert refused.message.startswith("Service temporarily unavailable: circuit breaker for model 'm' at triton:8001 is OPEN")
    assert not isinstance(refused, Permit) and refused.rejected == "open"
