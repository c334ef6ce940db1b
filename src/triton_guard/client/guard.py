"""A guard on the caller's side of Triton, for asyncio callers (tritonclient.grpc.aio).

The in-server guard cannot help when the whole server is unreachable or
wedged: its gRPC front end stuck, the process frozen, the network cut. Then
the caller's own request hangs, as the incident's orchestrator did. This is
the same defence one hop out: the same breaker (triton_guard.guard.breaker)
with the same parameters (GuardConfig), a hard deadline on every call, a
bulkhead, and fast "Service temporarily unavailable" while open.

Breaker state is per process: one breaker per (server URL, model), shared by
every GuardedClient of the process (a Ray Serve replica is one process).

Errors keep Triton's status codes: they are `ClientGuardError`, an
InferenceServerException whose `status()` is the gRPC code as tritonclient
writes it ("StatusCode.UNAVAILABLE"), with `http_status` beside it. What
counts against the server is decided the in-server guard's way: a 503 from
the server's own guard, a timeout, an internal error count; a client's
mistake (INVALID_ARGUMENT, an unknown model, `client_error_pattern`) never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
from tritonclient.utils import InferenceServerException

from triton_guard import defaults
from triton_guard.errors import ClientGuardError
from triton_guard.guard.breaker import CircuitBreaker, Permit, Rejection, State
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.core import UNAVAILABLE_PREFIX, GuardEvents
from triton_guard.guard.failures import Failure, FailureClassifier
from triton_guard.guard.shared_state import MemoryStore

# gRPC code -> HTTP status (the usual gRPC/HTTP mapping; Triton's HTTP front
# end uses the same numbers for the codes it returns).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# The caller's own mistake: the server answered, and answered right.
CLIENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNIMPLEMENTED,  # e.g. a decoupled model called unary
    }
)
_CODES_BY_TEXT = {str(code): code for code in grpc.StatusCode}

_PROCESS_STORE = MemoryStore()


def status_code(exc: InferenceServerException) -> grpc.StatusCode:
    """The gRPC code of a tritonclient error (UNKNOWN when it carries none)."""
    return _CODES_BY_TEXT.get(str(exc.status() or ""), grpc.StatusCode.UNKNOWN)


def default_channel_args(max_reconnect_backoff_ms: int = defaults.CLIENT_MAX_RECONNECT_BACKOFF_MS) -> list:
    """tritonclient's own channel options plus a short reconnect backoff.

    gRPC's default backoff grows to 120 s: after a server restart the channel
    could stay in TRANSIENT_FAILURE long after the server is back, and every
    half-open trial would fail without reaching it.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.initial_reconnect_backoff_ms", min(100, max_reconnect_backoff_ms)),
        ("grpc.min_reconnect_backoff_ms", min(100, max_reconnect_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", max_reconnect_backoff_ms),
    ]


class GuardedClient:
    """`await client.infer(model, inputs)` under a breaker, a bulkhead and a hard deadline.

    `config` takes the in-server guard's parameters (timeout_ms,
    failure_threshold, recovery_ms, half_open_max_calls, max_inflight and
    the window trips). `client` is a tritonclient.grpc.aio
    InferenceServerClient or anything with its async `infer`; by default one
    is made for `url` on first use, inside the running event loop.
    """

    def __init__(
        self,
        url: str = defaults.DEFAULT_URL,
        config: GuardConfig | None = None,
        *,
        client_error_pattern: str | None = None,
        client: Any = None,
        store: Any = None,
        events: GuardEvents | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.config = config or GuardConfig()
        self.classifier = FailureClassifier(client_error_pattern)
        self.events = events or GuardEvents()
        self._client = client
        self._owns_client = client is None
        self._store = store if store is not None else _PROCESS_STORE
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self._inflight: dict[str, int] = {}

    # --- reading ---------------------------------------------------------------

    def breaker(self, model: str) -> CircuitBreaker:
        if model not in self._breakers:
            self._breakers[model] = CircuitBreaker(f"{self.url}/{model}", self.config, self._store, self._clock)
        return self._breakers[model]

    def state(self, model: str) -> State:
        return self.breaker(model).snapshot().state

    def inflight(self, model: str) -> int:
        return self._inflight.get(model, 0)

    # --- the call ----------------------------------------------------------------

    async def infer(self, model_name: str, inputs, outputs=None, *, timeout_s: float | None = None, **kwargs):
        """tritonclient's `infer`, guarded; raises ClientGuardError instead of hanging or failing slowly.

        `timeout_s` may shorten this call's deadline below timeout_ms, never lengthen it.
        """
        breaker = self.breaker(model_name)
        decision = breaker.acquire()
        if decision.transition is not None:
            self.events.transitioned(decision.transition)
        if isinstance(decision, Rejection):
            self.events.rejected(decision.reason)
            raise ClientGuardError(self._rejection_message(model_name, decision), grpc.StatusCode.UNAVAILABLE, rejected=decision.reason)

        inflight = self._inflight.get(model_name, 0)
        if inflight >= self.config.max_inflight:
            self._record(breaker, decision, Failure.OVERLOADED, None)
            self.events.rejected("overloaded")
            raise ClientGuardError(
                f"model '{model_name}' at {self.url} overloaded: {inflight} calls in flight "
                f"(max_inflight={self.config.max_inflight})",
                grpc.StatusCode.UNAVAILABLE,
                failure=Failure.OVERLOADED,
                rejected="overloaded",
            )

        limit_s = self.config.timeout_ms / 1000.0
        if timeout_s is not None:
            limit_s = max(min(limit_s, timeout_s), 0.0)
        self._inflight[model_name] = inflight + 1
        started = self._clock()
        try:
            client = self._connect()
            # gRPC's deadline tells the server to give up too; wait_for is the
            # bound whatever the channel does (a frozen peer, a stuck connect).
            answer = await asyncio.wait_for(
                client.infer(model_name, inputs, outputs=outputs, client_timeout=limit_s, **kwargs), limit_s
            )
        except asyncio.CancelledError:
            # The caller gave up: nothing learnt about the server. An unrecorded
            # trial permit is reclaimed by the breaker's trial lease.
            raise
        except (asyncio.TimeoutError, TimeoutError):
            error = self._timeout_error(model_name)
        except InferenceServerException as exc:
            error = self._server_error(model_name, exc)
        except Exception as exc:  # the client library itself failed: the call did not happen right
            error = ClientGuardError(
                f"call to model '{model_name}' at {self.url} failed: {exc}", grpc.StatusCode.UNKNOWN, failure=Failure.UPSTREAM_ERROR
            )
        else:
            self._record(breaker, decision, None, self._clock() - started)
            return answer
        finally:
            self._inflight[model_name] -= 1
        self._record(breaker, decision, error.failure, self._clock() - started)
        raise error

    async def close(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def __aenter__(self) -> GuardedClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- helpers ------------------------------------------------------------------

    def _connect(self):
        if self._client is None:
            import tritonclient.grpc.aio as aioclient

            self._client = aioclient.InferenceServerClient(self.url, channel_args=default_channel_args())
        return self._client

    def _record(self, breaker: CircuitBreaker, permit: Permit, failure: Failure | None, duration_s: float | None) -> None:
        success = failure is None or not failure.counts_against_upstream
        transition = breaker.record(permit, success=success, duration_s=duration_s or 0.0)
        self.events.completed(duration_s, failure)
        if transition is not None:
            self.events.transitioned(transition)

    def _timeout_error(self, model: str) -> ClientGuardError:
        return ClientGuardError(
            f"model '{model}' at {self.url} did not answer within timeout_ms={self.config.timeout_ms}",
            grpc.StatusCode.UNAVAILABLE,
            failure=Failure.TIMEOUT,
        )

    def _server_error(self, model: str, exc: InferenceServerException) -> ClientGuardError:
        code = status_code(exc)
        message = exc.message() or str(exc)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return self._timeout_error(model)
        if code in CLIENT_CODES:
            failure = Failure.CLIENT_ERROR
        elif code is grpc.StatusCode.UNAVAILABLE:
            # The server's own guard (open, timed out, overloaded), a full
            # queue, or nothing listening: the server cannot serve this model.
            failure = self.classifier.classify(message)
            if failure is Failure.CLIENT_ERROR:
                failure = Failure.UPSTREAM_ERROR
        elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            failure = Failure.OVERLOADED
        else:  # INTERNAL, UNKNOWN, ...: a client's mistake only if its message says so
            failure = self.classifier.classify(message)
        return ClientGuardError(
            message,
            code,
            failure=failure,
            debug_details=exc.debug_details(),
        )

    def _rejection_message(self, model: str, rejection: Rejection) -> str:
        if rejection.state is State.OPEN:
            return (
                f"{UNAVAILABLE_PREFIX}: circuit breaker for model '{model}' at {self.url} is OPEN; "
                f"next trial call in {rejection.retry_after_s:.1f} s"
            )
        return (
            f"{UNAVAILABLE_PREFIX}: circuit breaker for model '{model}' at {self.url} is HALF_OPEN "
            f"with {self.config.half_open_max_calls} trial call(s) in flight; retry shortly"
        )
