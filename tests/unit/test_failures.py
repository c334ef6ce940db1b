"""FailureClassifier against the messages Triton 2.51 (r24.10) really writes.

Every BLS error comes back as INTERNAL, so the message is all the guard has:
a client's mistake must be told apart from the upstream's own trouble.
"""

from __future__ import annotations

import re

import pytest

from triton_guard.guard.failures import Failure, FailureClassifier

# Triton core's request validation (infer_request.cc): the called model never ran.
CLIENT_ERRORS = [
    "[request id: <id_unknown>] inference input 'X' data-type is 'INT32', but model 'm' expects 'FP32'",
    "[request id: <id_unknown>] expected 1 inputs but got 0 inputs for model 'm'. Got input(s) [], "
    "but missing required input(s) ['X']. Please provide all required input(s).",
    "[request id: <id_unknown>] inference request batch-size must be <= 8 for 'm'",
    "inference request batch-size must be <= 8 for 'm'",
    "[request id: <id_unknown>] unexpected shape for input 'X' for model 'm'. Expected [-1,4], got [2,3]. ",
    "[request id: <id_unknown>] unexpected inference input 'Z' for model 'm'",
    "[request id: <id_unknown>] unexpected inference output 'Q' for model 'm'",
    "[request id: <id_unknown>] input byte size mismatch for input 'X' for model 'm'. Expected 32, got 16",
    "[request id: <id_unknown>] unexpected number of string elements 4 for inference input 'S' for model 'm', "
    "expecting 3",
]

STUB_DEAD = (
    "Failed to process the request(s) for model instance 'm_0_0', "
    "message: Stub process 'm_0_0' is not healthy."
)


@pytest.fixture
def classifier() -> FailureClassifier:
    return FailureClassifier()


@pytest.mark.parametrize("message", CLIENT_ERRORS)
def test_triton_request_validation_errors_are_client_errors(classifier, message):
    assert classifier.classify(message) is Failure.CLIENT_ERROR


def test_dead_stub_is_stub_dead(classifier):
    assert classifier.classify(STUB_DEAD) is Failure.STUB_DEAD


def test_dead_stub_wins_over_a_quoted_client_error_phrase(classifier):
    # The stub died while handling a request whose text looks like bad input:
    # the server's condition is what counts against the upstream.
    message = STUB_DEAD + " last error: inference request batch-size must be <= 8 for 'm'"
    assert classifier.classify(message) is Failure.STUB_DEAD


def test_full_queue_is_overloaded(classifier):
    assert classifier.classify("Exceeds maximum queue size") is Failure.OVERLOADED
    assert classifier.classify("[request id: <id_unknown>] Exceeds maximum queue size") is Failure.OVERLOADED


def test_expired_queue_deadline_is_timeout(classifier):
    assert classifier.classify("Request timeout expired") is Failure.TIMEOUT


@pytest.mark.parametrize(
    "message",
    [
        "injected upstream failure",
        "X must be non-negative",  # a model's own bad-input error: unknown to Triton
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "the model expects a warm cache",  # 'expects' alone is not Triton's data-type check
        "",
    ],
)
def test_anything_else_is_an_upstream_error(classifier, message):
    assert classifier.classify(message) is Failure.UPSTREAM_ERROR


def test_only_client_errors_spare_the_upstream():
    assert Failure.CLIENT_ERROR.counts_against_upstream is False
    others = [f for f in Failure if f is not Failure.CLIENT_ERROR]
    assert others and all(f.counts_against_upstream for f in others)


def test_custom_client_error_pattern_covers_the_models_own_messages():
    classifier = FailureClassifier(client_error_pattern=r"must be non-negative|bad image")
    assert classifier.classify("X must be non-negative") is Failure.CLIENT_ERROR
    assert classifier.classify("bad image: 3 channels") is Failure.CLIENT_ERROR
    # Triton's own patterns still apply, and so do the server-side conditions.
    assert classifier.classify(CLIENT_ERRORS[0]) is Failure.CLIENT_ERROR
    assert classifier.classify(STUB_DEAD) is Failure.STUB_DEAD
    assert classifier.classify("Request timeout expired") is Failure.TIMEOUT
    assert classifier.classify("injected upstream failure") is Failure.UPSTREAM_ERROR


def test_custom_pattern_alternation_does_not_leak_into_the_builtin_patterns():
    # An anchored alternative must stay anchored: the pattern is grouped, not pasted.
    classifier = FailureClassifier(client_error_pattern=r"^bad input$|^rejected:")
    assert classifier.classify("bad input") is Failure.CLIENT_ERROR
    assert classifier.classify("rejected: too large") is Failure.CLIENT_ERROR
    assert classifier.classify("upstream said bad input twice") is Failure.UPSTREAM_ERROR
    assert classifier.classify("not rejected: fine") is Failure.UPSTREAM_ERROR


def test_without_custom_pattern_the_models_message_is_an_upstream_error():
    assert FailureClassifier(client_error_pattern=None).classify("bad image") is Failure.UPSTREAM_ERROR
    assert FailureClassifier(client_error_pattern="").classify("bad image") is Failure.UPSTREAM_ERROR


@pytest.mark.parametrize("pattern", ["(unclosed", "[a-", "*starts with a star"])
def test_invalid_custom_pattern_raises(pattern):
    with pytest.raises(re.error):
        FailureClassifier(client_error_pattern=pattern)
