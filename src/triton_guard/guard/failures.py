"""What an upstream error means, read from its message.

In Triton 24.10 every error coming back from a BLS call has code INTERNAL;
only the message survives. So the guard classifies by message: a client's
mistake must never count against the upstream, and a dead stub, a full
queue or an expired queue deadline must.
"""

from __future__ import annotations

import enum
import re

from triton_guard.guard.finite import NON_FINITE_PHRASE


class Failure(enum.Enum):
    """Why an upstream call did not give a good answer."""

    CLIENT_ERROR = "client_error"  # bad input: never counts against the upstream
    TIMEOUT = "timeout"  # no answer within timeout_ms (or the queue deadline expired)
    OVERLOADED = "overloaded"  # bulkhead full, or the upstream's queue is full
    STUB_DEAD = "stub_dead"  # the upstream's Python stub process died
    NON_FINITE = "non_finite"  # answered, but a floating-point output held NaN or inf (finite.py)
    UPSTREAM_ERROR = "upstream_error"  # anything else the upstream returned

    @property
    def counts_against_upstream(self) -> bool:
        return self is not Failure.CLIENT_ERROR


# Messages written by Triton core when it validates a request against the
# called model's config (r24.10 infer_request.cc and the model's input
# checks); the called model never ran.
_CLIENT_ERROR_PATTERNS = (
    r"data-type is '[^']*', but model '[^']*' expects",
    r"unexpected datatype",
    r"unexpected shape for input",
    r"expected \d+ inputs but got \d+ inputs",
    r"unexpected inference input",
    r"unexpected inference output",
    r"inference request batch-size must be",
    r"input byte size mismatch",
    r"unexpected number of string elements",
)
_STUB_DEAD = re.compile(r"Stub process .* is not healthy", re.IGNORECASE)
_QUEUE_FULL = re.compile(r"Exceeds maximum queue size", re.IGNORECASE)
_QUEUE_TIMEOUT = re.compile(r"Request timeout expired", re.IGNORECASE)
_NON_FINITE = re.compile(r"^output '[^']*' holds \d+ " + re.escape(NON_FINITE_PHRASE))


def is_stub_dead(message: str) -> bool:
    return bool(_STUB_DEAD.search(message))


class FailureClassifier:
    """Maps an upstream error message to a `Failure`.

    `client_error_pattern` adds the messages a user's own model uses for bad
    input (its INVALID_ARG code is lost on the way back through BLS).
    """

    def __init__(self, client_error_pattern: str | None = None) -> None:
        patterns = list(_CLIENT_ERROR_PATTERNS)
        if client_error_pattern:
            re.compile(client_error_pattern)  # a bad pattern fails the model load here
            patterns.append(client_error_pattern)
        self._client_error = re.compile("|".join(f"(?:{p})" for p in patterns))

    def classify(self, message: str) -> Failure:
        # Server-side conditions first: a dead stub's message may quote the input.
        if _STUB_DEAD.search(message):
            return Failure.STUB_DEAD
        if _QUEUE_FULL.search(message):
            return Failure.OVERLOADED
        if _QUEUE_TIMEOUT.search(message):
            return Failure.TIMEOUT
        if _NON_FINITE.search(message):
            return Failure.NON_FINITE
        if self._client_error.search(message):
            return Failure.CLIENT_ERROR
        return Failure.UPSTREAM_ERROR
