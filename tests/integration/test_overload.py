"""Overload is not a fault, against a real server: 256 clients for a few seconds, then a hang under them.

One `serve --chaos` server on a copy of the demo repository whose classifier
keeps a small bounded queue (max_queue_size 32: Triton sheds most of 256
clients' requests, and the canary's golden inferences with them, as a
user's bounded queue would); guard timeout 1 s; the canary samples every
250 ms. The load is triton_guard_demo.loadgen (one process of asyncio
clients); readiness is read through the canary, as `triton-guard probe`
reads it, and once through the Deployment's own readiness command.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import wait_until
from tests.deploy_helpers import readiness_probe_command
from tests.integration.conftest import CLI, breaker_state, chaos, fast_model_repository, run_cli, running_server
from triton_guard import promtext
from triton_guard.canary.probe import ModelHealthValidator
from triton_guard.guard.breaker import State
from triton_guard.model_config import CONFIG_FILE, read_config, write_config
from triton_guard_demo.loadgen import LoadRun, LoadSpec, heldout_images

pytestmark = pytest.mark.integration
CLIENTS = 256
QUEUE = 32
TIMEOUT_S = 1.0
PROBE_PERIOD_S = 2.0  # the load script's (scripts/overload.py); the Deployment's is 10 s
PROBE_TIMEOUT_S = 4.0  # the Deployment's --timeout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overload")
    repository = fast_model_repository(
        tmp, canary={"deadline_ms": "1500", "interval_ms": "1000", "sample_interval_ms": "250",
                     "overload_window_s": "3"},
        timeout_ms=int(TIMEOUT_S * 1000), recovery_ms=60_000)
    classifier = read_config(repository / "classifier" / CONFIG_FILE)
    classifier.dynamic_batching.ClearField("default_queue_policy")
    classifier.dynamic_batching.default_queue_policy.max_queue_size = QUEUE
    write_config(repository / "classifier" / CONFIG_FILE, classifier)
    with running_server(repository, tmp / "tritonserver.log", chaos=True) as srv:
        yield srv
        run_cli("chaos", "clear", "--url", srv.grpc_url)


@pytest.fixture(scope="module")
def digits():
    return heldout_images()


def _load(server, digits, seconds: float) -> LoadRun:
    run = LoadRun(LoadSpec(server.grpc_url, clients=CLIENTS, processes=1, client_timeout_s=10), *digits, seconds)
    run.start()
    # Under way once Triton holds a full queue of them.
    wait_until(lambda: _pending(server, "classifier") >= QUEUE / 2, 10, "the classifier's queue filling")
    return run


def _pending(server, model: str) -> float:
    samples = promtext.fetch(server.metrics_url, 2.0)
    return promtext.by_label(samples, "nv_inference_pending_request_count", "model").get(model, 0.0)


def _gauge(server, name: str) -> float | None:
    return promtext.sum_by_name(promtext.fetch(server.metrics_url, 2.0)).get(name)


def _check(result, name: str) -> dict:
    return next(c for c in result.report.to_dict()["checks"] if c["name"] == name)


def test_under_256_clients_goldens_are_shed_as_load_and_every_probe_stays_ready(server, digits):
    validator = ModelHealthValidator(server.grpc_url, timeout_s=PROBE_TIMEOUT_S)
    load = _load(server, digits, seconds=10.0)
    # The canary's own view of the overload needs one overload window of samples (overload_window_s 3)
    # before it can call the pod crowded: wait for it to say so once, then every probe must say so.
    wait_until(lambda: _gauge(server, "triton_guard_canary_overloaded") == 1.0, 8, "the pod reported overloaded")
    results, gauges = [], []
    for _ in range(3):
        results.append(validator.check())
        gauges.append(_gauge(server, "triton_guard_canary_overloaded"))
    argv = readiness_probe_command()
    argv[0], argv[argv.index("--url") + 1] = str(CLI), server.grpc_url
    deployment = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    status = run_cli("status", "--url", server.grpc_url, "--metrics-url", server.metrics_url)
    shed = load.collect().totals()

    assert shed.errors.get("queue_full", 0) > shed.answers > 0  # Triton really shed most of the load
    assert [r.health.value for r in results] == ["ready"] * 3, [r.reasons for r in results]
    assert deployment.returncode == 0, deployment.stdout + deployment.stderr
    # Every golden got through or was judged load, never a failure; and the pod said it was overloaded.
    goldens = [_check(r, "golden:pipeline")["reason"] for r in results]
    assert all(g.startswith(("case 'digits'", "overloaded: ")) for g in goldens), goldens
    assert all(_check(r, "overload")["value"]["overloaded"] for r in results), [_check(r, "overload") for r in results]
    assert 1.0 in gauges
    assert "(OVERLOADED)" in status.stdout.splitlines()[0], status.stdout


def test_a_hang_under_the_same_load_is_not_ready_within_a_probe_period_and_the_breaker_opens(server, digits):
    load = _load(server, digits, seconds=6.0)
    chaos(server, "hang")
    hung_at = time.monotonic()
    try:
        # A probe right after the hang may still join a canary run that began before it (and was
        # answered): the verdict must change within one probe period, not necessarily at once.
        validator = ModelHealthValidator(server.grpc_url, timeout_s=PROBE_TIMEOUT_S)
        result = validator.check()
        while result.health.value == "ready" and time.monotonic() - hung_at < PROBE_PERIOD_S:
            result = validator.check()
        answered_at = time.monotonic()
        assert result.health.value == "not_ready", result.reasons
        assert answered_at - hung_at < PROBE_PERIOD_S + 1.0, answered_at - hung_at
        golden = _check(result, "golden:pipeline")
        assert not golden["ok"] and not golden["reason"].startswith("overloaded"), golden
        wait_until(lambda: breaker_state(server, "classifier") is State.OPEN, TIMEOUT_S + 5, "the breaker OPEN")
    finally:
        load.collect()
    report = json.loads(run_cli("probe", "--url", server.grpc_url, "--json").stdout)
    assert not report["ready"]
