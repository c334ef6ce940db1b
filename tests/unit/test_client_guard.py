"""The client-side guard (triton_guard.client) over a fake tritonclient.grpc.aio client.

Breaker time is a FakeClock; the only real waits are deadlines of a few
milliseconds on calls that never answer. The same guard against a real
server, frozen and killed, is in tests/integration/test_ray_serve.py.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from tests.fakes import FakeClock
from triton_guard.client import ClientGuardError, GuardedClient, status_code
from triton_guard.client.guard import HTTP_STATUS, default_channel_args
from triton_guard.guard.breaker import State
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.policy import UNAVAILABLE_PREFIX, GuardEvents
from triton_guard.guard.failures import Failure
from triton_guard.guard.store import MemoryStore

URL = "127.0.0.1:8001"
CONFIG = GuardConfig(timeout_ms=20, failure_threshold=3, recovery_ms=1000, half_open_max_calls=1, max_inflight=2)
HANG = object()


def server_error(code: grpc.StatusCode, message: str) -> InferenceServerException:
    """What tritonclient.grpc.aio raises for a gRPC error (status is str(code))."""
    return InferenceServerException(msg=message, status=str(code))


class FakeTriton:
    """An aio InferenceServerClient whose answers a test scripts: a value, an exception or HANG."""

    def __init__(self, *script):
        self.script = list(script)
        self.default = "answer"
        self.calls: list[tuple[str, float]] = []
        self.cancelled = 0

    async def infer(self, model_name, inputs, outputs=None, client_timeout=None, **kwargs):
        self.calls.append((model_name, client_timeout))
        step = self.script.pop(0) if self.script else self.default
        if step is HANG:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if isinstance(step, BaseException):
            raise step
        return step


class Recorder(GuardEvents):
    def __init__(self):
        self.rejections, self.failures, self.transitions = [], [], []

    def rejected(self, reason, requests=1):
        self.rejections.append(reason)

    def completed(self, duration_s, failure, requests=1):
        self.failures.append(failure)

    def transitioned(self, transition):
        self.transitions.append(transition.to_state)


def guarded(fake, clock=None, config=CONFIG, **kwargs):
    return GuardedClient(URL, config, client=fake, store=MemoryStore(), clock=clock or FakeClock(100.0), **kwargs)


def run(coro):
    return asyncio.run(coro)


async def outcome(client, model="m", **kwargs):
    try:
        return await client.infer(model, [], **kwargs)
    except ClientGuardError as exc:
        return exc


def test_an_answer_passes_through_with_the_deadline_as_grpc_timeout():
    fake = FakeTriton("the result")
    client = guarded(fake)
    assert run(client.infer("m", [])) == "the result"
    assert fake.calls == [("m", 0.02)]
    assert client.state("m") is State.CLOSED and client.inflight("m") == 0


def test_a_per_call_timeout_only_shortens_the_deadline():
    fake = FakeTriton("a", "b")
    client = guarded(fake)
    run(client.infer("m", [], timeout_s=0.005))
    run(client.infer("m", [], timeout_s=60))
    assert [t for _, t in fake.calls] == [0.005, 0.02]


def test_server_unavailable_opens_then_fails_fast_without_calling():
    fake = FakeTriton(*[server_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")] * 3)
    events = Recorder()
    client = guarded(fake, events=events)

    async def scenario():
        errors = [await outcome(client) for _ in range(5)]
        return errors

    errors = run(scenario())
    assert [e.code for e in errors] == [grpc.StatusCode.UNAVAILABLE] * 5
    assert all(e.http_status == 503 for e in errors)
    assert [e.failure for e in errors[:3]] == [Failure.UPSTREAM_ERROR] * 3
    assert errors[2].message() == "failed to connect to all addresses"  # Triton's message kept
    assert len(fake.calls) == 3, "an open breaker must not call the server"
    for e in errors[3:]:
        assert e.rejected == "open" and e.failure is None
        assert e.message().startswith(f"{UNAVAILABLE_PREFIX}: circuit breaker for model 'm' at {URL} is OPEN")
        assert "next trial call in 1.0 s" in e.message()
        assert e.status() == "StatusCode.UNAVAILABLE"  # as tritonclient writes it
        assert isinstance(e, InferenceServerException)
    assert events.transitions == [State.OPEN] and events.rejections == ["open", "open"]


def test_recovery_half_open_trial_then_closed():
    clock = FakeClock(100.0)
    fake = FakeTriton(*[server_error(grpc.StatusCode.UNAVAILABLE, "down")] * 3)
    events = Recorder()
    client = guarded(fake, clock=clock, events=events)

    async def scenario():
        for _ in range(3):
            await outcome(client)
        clock.advance(0.999)
        still_open = await outcome(client)
        clock.advance(0.002)
        trial = await client.infer("m", [])
        return still_open, trial

    still_open, trial = run(scenario())
    assert still_open.rejected == "open"
    assert trial == "answer" and client.state("m") is State.CLOSED
    assert events.transitions == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_a_failed_trial_reopens():
    clock = FakeClock(100.0)
    fake = FakeTriton(*[server_error(grpc.StatusCode.UNAVAILABLE, "down")] * 4)
    client = guarded(fake, clock=clock)

    async def scenario():
        for _ in range(3):
            await outcome(client)
        clock.advance(1.0)
        trial = await outcome(client)
        after = await outcome(client)
        return trial, after

    trial, after = run(scenario())
    assert trial.failure is Failure.UPSTREAM_ERROR and after.rejected == "open"
    assert client.state("m") is State.OPEN


def test_half_open_admits_only_the_trial():
    clock = FakeClock(100.0)
    fake = FakeTriton(*[server_error(grpc.StatusCode.UNAVAILABLE, "down")] * 3, HANG)
    client = guarded(fake, clock=clock, config=GuardConfig(timeout_ms=200, failure_threshold=3, recovery_ms=1000))

    async def scenario():
        for _ in range(3):
            await outcome(client)
        clock.advance(1.0)
        trial = asyncio.ensure_future(outcome(client))
        while len(fake.calls) < 4:  # the trial has reached the server
            await asyncio.sleep(0)
        second = await outcome(client)
        trial.cancel()
        return second

    second = run(scenario())
    assert second.rejected == "half_open_full" and second.code is grpc.StatusCode.UNAVAILABLE
    assert "HALF_OPEN" in second.message() and second.message().startswith(UNAVAILABLE_PREFIX)
    assert len(fake.calls) == 4


def test_a_hung_server_gets_a_timeout_at_the_deadline_and_the_call_is_cancelled():
    fake = FakeTriton(HANG, HANG, HANG)
    client = guarded(fake)

    async def scenario():
        return [await outcome(client) for _ in range(4)]

    errors = run(scenario())
    for e in errors[:3]:
        assert e.failure is Failure.TIMEOUT and e.code is grpc.StatusCode.UNAVAILABLE and e.http_status == 503
        assert e.message() == f"model 'm' at {URL} did not answer within timeout_ms=20"
    assert fake.cancelled == 3, "the abandoned gRPC call must be cancelled, not left running"
    assert errors[3].rejected == "open"
    assert client.inflight("m") == 0


def test_grpc_deadline_exceeded_is_the_same_timeout():
    fake = FakeTriton(server_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    error = run(outcome(guarded(fake)))
    assert error.failure is Failure.TIMEOUT and error.code is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    "code, message",
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "unexpected shape for input 'IMAGE' for model 'pipeline'"),
        (grpc.StatusCode.NOT_FOUND, "Request for unknown model: 'nope' is not found"),
        (grpc.StatusCode.UNIMPLEMENTED, "ModelInfer RPC doesn't support models with decoupled transaction policy"),
    ],
)
def test_a_client_mistake_keeps_its_code_and_never_opens(code, message):
    fake = FakeTriton(*[server_error(code, message)] * 10)
    events = Recorder()
    client = guarded(fake, events=events)

    async def scenario():
        return [await outcome(client) for _ in range(10)]

    errors = run(scenario())
    assert len(fake.calls) == 10 and client.state("m") is State.CLOSED
    assert {e.code for e in errors} == {code}
    assert {e.http_status for e in errors} == {HTTP_STATUS[code]}
    assert {e.failure for e in errors} == {Failure.CLIENT_ERROR}
    assert errors[0].message() == message and events.transitions == []


def test_a_400_is_400_and_a_server_guard_503_is_503():
    fake = FakeTriton(
        server_error(grpc.StatusCode.INVALID_ARGUMENT, "bad dtype"),
        server_error(
            grpc.StatusCode.UNAVAILABLE,
            "in ensemble 'pipeline', Service temporarily unavailable: circuit breaker for model 'classifier' is OPEN",
        ),
    )
    client = guarded(fake)

    async def scenario():
        return await outcome(client), await outcome(client)

    bad, unavailable = run(scenario())
    assert (bad.http_status, bad.failure.counts_against_upstream) == (400, False)
    assert (unavailable.http_status, unavailable.failure.counts_against_upstream) == (503, True)
    assert client.breaker("m").snapshot().consecutive_failures == 1


def test_internal_errors_count_unless_the_pattern_says_client():
    fake = FakeTriton(
        server_error(grpc.StatusCode.INTERNAL, "upstream model 'classifier' failed: CUDA error"),
        server_error(grpc.StatusCode.INTERNAL, "my_model: text too long"),
        server_error(grpc.StatusCode.INTERNAL, "Stub process 'classifier_0_0' is not healthy."),
    )
    client = guarded(fake, client_error_pattern=r"text too long")

    async def scenario():
        return [await outcome(client) for _ in range(3)]

    errors = run(scenario())
    assert [e.failure for e in errors] == [Failure.UPSTREAM_ERROR, Failure.CLIENT_ERROR, Failure.STUB_DEAD]
    assert {e.http_status for e in errors} == {500}
    assert client.breaker("m").snapshot().consecutive_failures == 1  # the client error broke the run


def test_a_full_server_queue_is_overloaded():
    fake = FakeTriton(server_error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size"))
    assert run(outcome(guarded(fake))).failure is Failure.OVERLOADED


def test_the_bulkhead_refuses_at_once_above_max_inflight():
    fake = FakeTriton(HANG, HANG)
    events = Recorder()
    client = guarded(fake, config=GuardConfig(timeout_ms=5000, max_inflight=2, failure_threshold=5), events=events)

    async def scenario():
        hung = [asyncio.ensure_future(outcome(client)) for _ in range(2)]
        while len(fake.calls) < 2:
            await asyncio.sleep(0)
        refused = await outcome(client)
        inflight = client.inflight("m")
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)
        return refused, inflight

    refused, inflight = run(scenario())
    assert inflight == 2 and len(fake.calls) == 2
    assert refused.rejected == "overloaded" and refused.failure is Failure.OVERLOADED
    assert refused.message() == f"model 'm' at {URL} overloaded: 2 calls in flight (max_inflight=2)"
    assert events.rejections == ["overloaded"]
    assert events.failures == []  # the guard refusing itself is no failure of the server
    assert client.inflight("m") == 0


def test_a_caller_cancelling_records_nothing():
    fake = FakeTriton(HANG)
    client = guarded(fake, config=GuardConfig(timeout_ms=5000, failure_threshold=1))

    async def scenario():
        task = asyncio.ensure_future(client.infer("m", []))
        while not fake.calls:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    snapshot = client.breaker("m").snapshot()
    assert snapshot.state is State.CLOSED and snapshot.calls_in_window == 0 and fake.cancelled == 1
    assert client.inflight("m") == 0


def test_a_client_library_failure_is_an_upstream_error():
    fake = FakeTriton(RuntimeError("channel closed"))
    error = run(outcome(guarded(fake)))
    assert error.failure is Failure.UPSTREAM_ERROR and error.code is grpc.StatusCode.UNKNOWN
    assert "channel closed" in error.message()


def test_breakers_are_per_model_and_shared_by_the_clients_of_a_process():
    store, clock = MemoryStore(), FakeClock(100.0)
    down = [server_error(grpc.StatusCode.UNAVAILABLE, "down")] * 3
    first = GuardedClient(URL, CONFIG, client=FakeTriton(*down), store=store, clock=clock)
    second = GuardedClient(URL, CONFIG, client=FakeTriton(), store=store, clock=clock)
    other_server = GuardedClient("127.0.0.1:9001", CONFIG, client=FakeTriton(), store=store, clock=clock)

    async def scenario():
        for _ in range(3):
            await outcome(first, "a")
        return await outcome(second, "a"), await second.infer("b", []), await other_server.infer("a", [])

    refused, other_model, other_url = run(scenario())
    assert refused.rejected == "open"
    assert other_model == other_url == "answer"


def test_status_code_reads_tritonclient_status_text():
    assert status_code(server_error(grpc.StatusCode.UNAVAILABLE, "x")) is grpc.StatusCode.UNAVAILABLE
    assert status_code(InferenceServerException("no status")) is grpc.StatusCode.UNKNOWN


def test_every_grpc_error_code_has_an_http_status():
    assert set(HTTP_STATUS) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


def test_channel_args_bound_the_reconnect_backoff():
    args = dict(default_channel_args(750))
    assert args["grpc.max_reconnect_backoff_ms"] == 750
    assert args["grpc.initial_reconnect_backoff_ms"] <= 750
    assert args["grpc.max_receive_message_length"] > 2**20  # tritonclient's own options kept
