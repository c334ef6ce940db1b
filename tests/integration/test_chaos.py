"""Fault injection end to end: `triton-guard chaos` (the real CLI) against a real `serve --chaos` server.

One server on a copy of the project's repository whose guard has short
limits (timeout 500 ms, 3 failures open, recovery 1.5 s); every fault is
observed through `pipeline` over gRPC, as a client would see it.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import wait_until
from tests.integration.conftest import call_pipeline, chaos_server, run_cli
from triton_guard import defaults
from triton_guard.chaos.protocol import ChaosControl
from triton_guard_demo.digits import heldout_split, load_digits_uint8
from triton_guard.server import Ports

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5
FAILURE_THRESHOLD = 3
RECOVERY_S = 1.5
# A caller may also have waited in the guard's own queue (its deadline, swept every 500 ms).
DEADLINE_S = TIMEOUT_S + 1.0
TARGET = defaults.CHAOS_TARGET_MODEL


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with chaos_server(tmp_path_factory.mktemp("chaos-server"), timeout_ms=int(TIMEOUT_S * 1000),
                      failure_threshold=FAILURE_THRESHOLD, recovery_ms=int(RECOVERY_S * 1000)) as srv:
        yield srv


@pytest.fixture(scope="module")
def images():
    _, _, test_x, _ = heldout_split(*load_digits_uint8())
    return test_x[:64]


def chaos(url: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli("chaos", *args, "--url", url, "--timeout", "10")


def call(server, images):
    """(ok, (labels, probs) or the error, seconds) for one pipeline request."""
    ok, result, seconds = call_pipeline(server, images, client_timeout_s=10)
    return ok, (result.as_numpy("LABEL")[:, 0], result.as_numpy("PROBS")) if ok else result, seconds


@pytest.fixture
def chaotic(server, images):
    """The chaos server, answering cleanly before and after the test."""
    assert call(server, images[:1])[0]
    yield server
    ChaosControl(server.chaos_dir).clear(TARGET)
    wait_until(lambda: call(server, images[:1])[0], RECOVERY_S + 5, "pipeline answers after clear")


def test_error_fails_requests_and_clear_brings_answers_back(chaotic, images):
    done = chaos(chaotic.grpc_url, "error")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"model '{TARGET}': error (every execute fails)"
    ok, error, _ = call(chaotic, images)
    assert not ok and error.status() == "StatusCode.INTERNAL"
    # Guarded in-process, the model's own error answer goes out as it wrote it (and counts).
    assert f"in ensemble 'pipeline', chaos: injected error in model '{TARGET}'" == error.message()
    for _ in range(FAILURE_THRESHOLD):  # the guard counts them: the breaker opens
        ok, error, _ = call(chaotic, images)
    assert not ok and "Service temporarily unavailable" in error.message(), error
    cleared = chaos(chaotic.grpc_url, "clear")
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.strip() == f"model '{TARGET}': cleared (was error (every execute fails))"
    wait_until(lambda: call(chaotic, images)[0], RECOVERY_S + 3, "answers once the breaker recovers")


def test_slow_adds_about_slow_ms(chaotic, images):
    def median_seconds():
        results = [call(chaotic, images[:1]) for _ in range(5)]
        assert all(ok for ok, _, _ in results), results
        return float(np.median([s for _, _, s in results]))

    clean = median_seconds()
    done = chaos(chaotic.grpc_url, "slow", "--slow-ms", "200")
    assert done.returncode == 0 and "+200 ms per execute" in done.stdout, done
    slowed = median_seconds()
    assert 0.15 < slowed - clean < 0.40, (clean, slowed)


def test_nan_outputs_are_stopped_by_the_guard_and_reach_an_unguarded_client(chaotic, images):
    done = chaos(chaotic.grpc_url, "nan")
    assert done.returncode == 0, done.stderr
    ok, error, _ = call(chaotic, images)  # through the guard: a failure naming the output, not an answer
    assert not ok and error.status() == "StatusCode.INTERNAL"
    assert f"output 'PROBS' holds {len(images) * 10} non-finite value(s)" in error.message()
    # pipeline_unguarded's classifier is a model of its own (the same code, no guard).
    assert chaos(chaotic.grpc_url, "nan", "--model", "classifier_unguarded").returncode == 0
    try:
        client = grpcclient.InferenceServerClient(chaotic.grpc_url)
        image = grpcclient.InferInput("IMAGE", list(images.shape), "UINT8")
        image.set_data_from_numpy(images)
        probs = client.infer("pipeline_unguarded", [image], client_timeout=10).as_numpy("PROBS")
        assert probs.shape == (len(images), 10) and np.isnan(probs).all()  # the fault itself works
    finally:
        chaos(chaotic.grpc_url, "clear", "--model", "classifier_unguarded")


def test_drift_changes_the_numbers_not_most_labels(chaotic, images):
    ok, (clean_labels, clean_probs), _ = call(chaotic, images)
    assert ok
    done = chaos(chaotic.grpc_url, "drift")  # default scale
    assert done.returncode == 0 and f"scale {defaults.CHAOS_DRIFT_SCALE:g}" in done.stdout, done
    ok, (labels, probs), _ = call(chaotic, images)
    assert ok and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(probs - clean_probs).max() > 0.05
    assert np.mean(labels == clean_labels) >= 0.8
    assert chaos(chaotic.grpc_url, "clear").returncode == 0
    ok, (_, after), _ = call(chaotic, images)
    np.testing.assert_allclose(after, clean_probs, rtol=1e-6)  # the clean weights were never touched


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_leak_grows_the_stub_at_the_rate_up_to_the_cap_and_clear_frees_it(chaotic):
    rate_mb_s, cap_mb = 40, 160
    pid = chaotic.stub_pids()[f"{TARGET}_0_0"]
    baseline = _rss_mb(pid)
    done = chaos(chaotic.grpc_url, "leak", "--leak-mb-per-s", str(rate_mb_s), "--leak-cap-mb", str(cap_mb))
    assert done.returncode == 0 and "+40 MB/s held, up to 160 MB" in done.stdout, done
    wait_until(lambda: _rss_mb(pid) - baseline > 4, 5, "the leak growing")
    first, first_at = _rss_mb(pid), time.monotonic()
    time.sleep(1.5)  # the window the rate is measured over (not a wait for a state)
    second, second_at = _rss_mb(pid), time.monotonic()
    measured = (second - first) / (second_at - first_at)
    assert 0.6 * rate_mb_s < measured < 1.4 * rate_mb_s, (first, second, measured)
    wait_until(lambda: _rss_mb(pid) - baseline > 0.9 * cap_mb, cap_mb / rate_mb_s + 3, "leak reaches its cap")
    time.sleep(0.5)  # a window in which it must not grow past the cap (not a wait for a state)
    assert _rss_mb(pid) - baseline < cap_mb + 20  # held at the cap
    assert chaos(chaotic.grpc_url, "clear").returncode == 0
    wait_until(lambda: _rss_mb(pid) - baseline < 20, 3, "leaked memory released after clear")


def test_hang_makes_callers_fail_fast_and_clear_releases_it(chaotic, images):
    done = chaos(chaotic.grpc_url, "hang")
    assert done.returncode == 0 and "hang" in done.stdout, done
    messages = []
    for _ in range(FAILURE_THRESHOLD + 2):
        ok, error, seconds = call(chaotic, images[:1])
        assert not ok and error.status() == "StatusCode.UNAVAILABLE", error
        assert seconds < DEADLINE_S, (seconds, error.message())
        messages.append(error.message())
    assert f"'{TARGET}' did not answer within timeout_ms=500" in messages[0], messages
    assert "Service temporarily unavailable" in messages[-1], messages
    assert chaos(chaotic.grpc_url, "clear").returncode == 0
    wait_until(lambda: call(chaotic, images[:1])[0], RECOVERY_S + 3, "answers once the hang is cleared")


def test_models_without_a_hook_or_unknown_are_refused(chaotic, images):
    unknown = chaos(chaotic.grpc_url, "hang", "--model", "no_such_model")
    assert unknown.returncode == 1
    assert "refused" in unknown.stderr and "'no_such_model' is not loaded and ready" in unknown.stderr
    unhooked = chaos(chaotic.grpc_url, "hang", "--model", "preprocess")
    assert unhooked.returncode == 1
    assert "'preprocess' takes no faults" in unhooked.stderr and f"models that do: {TARGET}" in unhooked.stderr
    assert call(chaotic, images[:1])[0]  # nothing was injected


def test_chaos_model_refuses_a_malformed_command(chaotic):
    client = grpcclient.InferenceServerClient(chaotic.grpc_url)
    command = grpcclient.InferInput("COMMAND", [1], "BYTES")
    command.set_data_from_numpy(np.array([b'{"fault": "slow", "model": "classifier", "slow_ms": -1}'], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        client.infer(defaults.CHAOS_MODEL, [command])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "slow_ms must be > 0" in info.value.message()


def test_a_closed_port_is_unreachable_with_exit_2():
    url = f"localhost:{Ports.free().grpc}"
    unreachable = chaos(url, "hang")
    assert unreachable.returncode == 2
    assert f"unreachable: {url}" in unreachable.stderr
