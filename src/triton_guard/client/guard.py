"""A guard on the caller's side of Triton, for asyncio callers (tritonclient.grpc.aio).

The in-server guard cannot help when the whole server is unreachable or
wedged: its gRPC front end stuck, the process frozen, the network cut. Then
the caller's own request hangs, as the incident's orchestrator did. This is
the same defence one hop out, the same code: the guard's policy
(triton_guard.guard.policy: admission, breaker, bulkhead refusal, outcome,
messages) with the same parameters (GuardConfig), driven by asyncio here
(`wait_for` enforces the hard deadline) instead of the in-server workers.

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
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.failures import Failure, FailureClassifier
from triton_guard.guard.policy import GuardEvents, GuardPolicy, GuardResult
from triton_guard.guard.record import Permit, State
from triton_guard.guard.store import MemoryStore

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
        self._policies: dict[str, GuardPolicy] = {}
        self._inflight: dict[str, int] = {}

    # --- reading ---------------------------------------------------------------

    def policy(self, model: str) -> GuardPolicy:
        policy = self._policies.get(model)
        if policy is None:
            breaker = CircuitBreaker(f"{self.url}/{model}", self.config, self._store, self._clock)
            policy = self._policies[model] = GuardPolicy(
                model, self.config, breaker, self.classifier, self.events, self._clock,
                label=f"model '{model}' at {self.url}",
            )  # fmt: skip
        return policy

    def breaker(self, model: str) -> CircuitBreaker:
        return self.policy(model).breaker

    def state(self, model: str) -> State:
        return self.breaker(model).snapshot().state

    def inflight(self, model: str) -> int:
        return self._inflight.get(model, 0)

    # --- the call ----------------------------------------------------------------

    async def infer(self, model_name: str, inputs, outputs=None, *, timeout_s: float | None = None, **kwargs):
        """tritonclient's `infer`, guarded; raises ClientGuardError instead of hanging or failing slowly.

        `timeout_s` may shorten this call's deadline below timeout_ms, never lengthen it.
        """
        policy = self.policy(model_name)
        started = self._clock()
        limit_s = policy.time_left(None, started) if timeout_s is None else max(min(policy.timeout_s, timeout_s), 0.0)
        permit = policy.admit(1, None if timeout_s is None else started + limit_s, started)
        if type(permit) is not Permit:
            raise _refused(permit)
        inflight = self._inflight.get(model_name, 0)
        if inflight >= self.config.max_inflight:
            raise _refused(policy.overloaded(permit, 1, inflight))
        self._inflight[model_name] = inflight + 1
        try:
            client = self._connect()
            # gRPC's deadline tells the server to give up too; wait_for is the
            # bound whatever the channel does (a frozen peer, a stuck connect).
            answer = await asyncio.wait_for(
                client.infer(model_name, inputs, outputs=outputs, client_timeout=limit_s, **kwargs), limit_s
            )
        except asyncio.CancelledError:
            policy.abandoned(permit)  # the caller gave up: nothing learnt about the server
            raise
        except (asyncio.TimeoutError, TimeoutError):
            raise _refused(policy.finished(permit, 1, self._clock() - started, Failure.TIMEOUT)) from None
        except InferenceServerException as exc:
            code, failure = self._classify(exc)
            if failure is Failure.TIMEOUT:  # the server's DEADLINE_EXCEEDED: our timeout, as the guard says it
                raise _refused(policy.finished(permit, 1, self._clock() - started, failure)) from None
            policy.finished(permit, 1, self._clock() - started, failure, exc.message())
            # The server's own words and code go to the caller.
            raise ClientGuardError(
                exc.message() or str(exc), code, failure=failure, debug_details=exc.debug_details()
            ) from None
        except Exception as exc:  # the client library itself failed: the call did not happen right
            policy.finished(permit, 1, self._clock() - started, Failure.UPSTREAM_ERROR, str(exc))
            raise ClientGuardError(
                f"call to model '{model_name}' at {self.url} failed: {exc}", grpc.StatusCode.UNKNOWN,
                failure=Failure.UPSTREAM_ERROR,
            ) from None
        finally:
            self._inflight[model_name] -= 1
        policy.finished(permit, 1, self._clock() - started)
        return answer

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

    def _classify(self, exc: InferenceServerException) -> tuple[grpc.StatusCode, Failure]:
        """The server's error as the in-server guard names it (the transport's part of classifying)."""
        code = status_code(exc)
        message = exc.message() or str(exc)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return code, Failure.TIMEOUT
        if code in CLIENT_CODES:
            return code, Failure.CLIENT_ERROR
        if code is grpc.StatusCode.UNAVAILABLE:
            # The server's own guard (open, timed out, overloaded), a full
            # queue, or nothing listening: the server cannot serve this model.
            failure = self.classifier.classify(message)
            return code, Failure.UPSTREAM_ERROR if failure is Failure.CLIENT_ERROR else failure
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            return code, Failure.OVERLOADED
        return code, self.classifier.classify(message)  # INTERNAL, UNKNOWN, ...: a client's mistake only if it says so


def _refused(result: GuardResult) -> ClientGuardError:
    """The policy's refusal or timeout as the error the caller gets (UNAVAILABLE, as the in-server guard answers)."""
    return ClientGuardError(
        result.message, grpc.StatusCode.UNAVAILABLE, failure=result.failure, rejected=result.rejected
    )
