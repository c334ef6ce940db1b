"""Ray Serve in front of a real Triton: triton_guard.client.ray_serve, its guard and its health check.

One real local Ray (started once for the module: it is slow to start) runs
the application `app_builder` builds, exactly what `serve run
triton_guard.client.ray_serve:app_builder ...` starts, in front of one real
`serve --chaos` tritonserver (the demo repository with short limits). Every
server and client is on 127.0.0.1. Faults, one at a time, each followed by
recovery:

- the model hung (`triton-guard chaos hang`): callers get 503 within the
  deadline, then fast rejections; the health check fails (the canary's golden
  call fails) and Ray Serve marks the deployment UNHEALTHY;
- the Triton process frozen (SIGSTOP): 503 at the client guard's own deadline,
  then fast; the health check fails (the canary does not answer);
- the Triton process killed (SIGKILL): 503 at once (nothing listens), the
  health check fails (unreachable); the same server is started again on the
  same ports (one server at a time) and the deployment recovers.

What each fault looked like from the caller's side (status, latency) is
printed as one JSON line per phase (`pytest -s` shows them).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.conftest import chaos, fast_model_repository
from triton_guard.server import LocalServer, Ports
from triton_guard_demo.digits import heldout_split, load_digits_uint8

pytestmark = pytest.mark.integration

serve = pytest.importorskip("ray.serve", reason="ray[serve] is a test dependency (pyproject.toml [test])")
import ray  # noqa: E402  (after the skip)

from triton_guard.client.ray_serve import app_builder  # noqa: E402

LOOPBACK = "127.0.0.1"
APP = "triton_guard"
DEPLOYMENT = "TritonGuardDeployment"
ROUTE = "/infer"

# The in-server guard answers a hung classifier at 500 ms; the client guard's
# own deadline (1 s) is what bounds a frozen or unreachable server.
SERVER_GUARD_TIMEOUT_S = 0.5
CLIENT_TIMEOUT_S = 1.0
FAILURE_THRESHOLD = 3
RECOVERY_S = 2.0
# Ray Serve replaces a replica after 3 failed checks in a row: at a 2 s period
# that is after the client breaker has opened (3 x 1 s), so both show.
HEALTH_TIMEOUT_S = 1.0
HEALTH_PERIOD_S = 2.0
# Serve's proxy answers 408 after this long: what bounds a request that finds
# no replica (Ray has replaced the unhealthy one and the new one fails its
# first health check while the fault lasts).
PROXY_TIMEOUT_S = 3.0
# A deadline's answer comes within this much of the deadline (a loaded 2-core box).
SLACK_S = 1.0
# A rejection made without calling Triton answers well inside any deadline.
FAST_S = 0.5
HTTP_TIMEOUT_S = 30.0


def _triton(ports: Ports, repository: Path, log) -> LocalServer:
    return LocalServer(
        model_repository=repository, ports=ports, log=log, chaos=True, host=LOOPBACK,
        extra_args=("--exit-timeout-secs=3",),
    )


class Triton:
    """The module's tritonserver, which the kill test stops and starts again on the same ports."""

    def __init__(self, tmp: Path) -> None:
        self.repository = fast_model_repository(
            tmp,
            canary={"deadline_ms": "1000", "interval_ms": "1000"},
            timeout_ms=int(SERVER_GUARD_TIMEOUT_S * 1000),
            failure_threshold=FAILURE_THRESHOLD,
            recovery_ms=1500,
        )
        self.ports = Ports.free()
        self.log = open(tmp / "tritonserver.log", "a")
        self.server = _triton(self.ports, self.repository, self.log)

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.ports.grpc}"

    @property
    def pid(self) -> int:
        return self.server.process.pid

    def start(self) -> None:
        self.server.start()

    def restart(self) -> float:
        """After a kill: clean up, start a new server on the same ports; seconds it took."""
        self.server.stop(timeout_s=5)
        # The killed server's Python-backend shared memory (same name prefix).
        prefix = f"triton_guard_{os.getpid()}_{self.ports.grpc}_"
        for leftover in Path("/dev/shm").glob(prefix + "*"):
            leftover.unlink(missing_ok=True)
        started = time.monotonic()
        self.server = _triton(self.ports, self.repository, self.log)
        self.server.start()
        return time.monotonic() - started

    def stop(self) -> None:
        self.server.stop()
        self.log.close()


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    server = Triton(tmp_path_factory.mktemp("ray-serve-triton"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def timings():
    return {}


def _start_ray(tmp_path_factory, attempts: int = 2) -> None:
    """ray.init, once more if the first, cold start timed out.

    Ray's wait for its raylet to register is a fixed 30 s (not configurable):
    a cold start on a loaded fresh machine can miss it, a second start
    (warm page cache) takes seconds.
    """
    for attempt in range(1, attempts + 1):
        try:
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                object_store_memory=100 * 1024 * 1024,
                _node_ip_address=LOOPBACK,
                _temp_dir=str(tmp_path_factory.mktemp("ray")),
                log_to_driver=False,
            )
            return
        except Exception as exc:  # Ray raises RuntimeError or a bare Exception on start-up timeouts
            ray.shutdown()
            if attempt == attempts:
                raise
            print(f"\nray.init failed on attempt {attempt} ({exc}); starting it again")


@pytest.fixture(scope="module")
def app(triton, timings, tmp_path_factory):
    """Ray, Serve's HTTP proxy on 127.0.0.1 and the application: (base URL, seconds to start)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The first start of a freshly installed Ray (CI's fresh clone, cold page
    # cache, a loaded 2-core box) took longer than Ray's default 30 s wait for
    # its GCS port file: ray.init failed with "Timed out waiting for file
    # .../gcs_server_port_...". A later start takes ~3 s; give the cold one time.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "240")
    started = time.monotonic()
    _start_ray(tmp_path_factory)
    port = Ports.free().http
    serve.start(http_options={"host": LOOPBACK, "port": port, "request_timeout_s": PROXY_TIMEOUT_S})
    application = app_builder(
        {
            "url": triton.grpc_url,
            "model": "pipeline",
            "timeout_ms": str(int(CLIENT_TIMEOUT_S * 1000)),
            "failure_threshold": str(FAILURE_THRESHOLD),
            "recovery_ms": str(int(RECOVERY_S * 1000)),
            "health_timeout_s": str(HEALTH_TIMEOUT_S),
            "health_check_period_s": str(HEALTH_PERIOD_S),
            "health_check_timeout_s": str(HEALTH_TIMEOUT_S + 2),
        }
    )
    serve.run(application, name=APP, route_prefix=ROUTE)
    timings["ray_and_serve_start_s"] = round(time.monotonic() - started, 2)
    try:
        yield f"http://{LOOPBACK}:{port}{ROUTE}"
    finally:
        serve.shutdown()
        ray.shutdown()
        print("\nray-serve timings " + json.dumps(timings))


@pytest.fixture(scope="module")
def digits():
    _, _, images, labels = heldout_split(*load_digits_uint8())
    return images, labels


def body(image) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "IMAGE", "shape": [1, 8, 8], "datatype": "UINT8", "data": image.reshape(-1).tolist()}]}
    ).encode()


def post(url: str, data: bytes) -> tuple[int, dict, float]:
    """(HTTP status, JSON answer, seconds) for one request to the deployment."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    seconds = time.monotonic() - started
    try:
        answer = json.loads(text)
    except ValueError:
        answer = {"raw": text.decode(errors="replace")}
    return status, answer, seconds


def deployment_status() -> str:
    status = serve.status().applications[APP].deployments[DEPLOYMENT].status
    return getattr(status, "value", status)


def answers_right(url: str, digits) -> bool:
    images, labels = digits
    status, answer, _ = post(url, body(images[0]))
    return status == 200 and _label(answer) == labels[0]


def _label(answer: dict) -> int:
    return next(o for o in answer["outputs"] if o["name"] == "LABEL")["data"][0]


def summary(outcomes: list[tuple[int, dict, float]]) -> list[dict]:
    return [
        {"status": s, "seconds": round(t, 3), "error": (a.get("error") or "")[:90]} for s, a, t in outcomes
    ]


def fault_phase(url: str, digits, n: int) -> list[tuple[int, dict, float]]:
    images, _ = digits
    return [post(url, body(images[i % len(images)])) for i in range(n)]


def wait_recovered(url: str, digits, timings: dict, key: str, started: float) -> None:
    wait_until(lambda: answers_right(url, digits), 60, "the deployment answering right again")
    timings[f"{key}_answers_again_after_s"] = round(time.monotonic() - started, 2)
    wait_until(lambda: deployment_status() == "HEALTHY", 60, "the deployment HEALTHY again")
    timings[f"{key}_healthy_again_after_s"] = round(time.monotonic() - started, 2)


def without_replica(url: str, digits, timings: dict, key: str) -> None:
    """Once Ray Serve has taken the unhealthy replica away: answered by Ray itself, within its proxy timeout."""
    outcomes = fault_phase(url, digits, 2)
    timings[f"{key}_without_replica"] = summary(outcomes)
    for status, answer, seconds in outcomes:
        assert status in (408, 503), (status, answer)
        assert seconds < PROXY_TIMEOUT_S + SLACK_S, seconds


def assert_rejected_fast(outcomes) -> None:
    for status, answer, seconds in outcomes:
        assert status == 503, (status, answer)
        assert answer["error"].startswith("Service temporarily unavailable: circuit breaker for model 'pipeline'"), answer
        assert seconds < FAST_S, seconds


# --- healthy -------------------------------------------------------------------------------


def test_healthy_answers_match_the_labels(app, digits, timings):
    images, labels = digits
    outcomes = [post(app, body(images[i])) for i in range(20)]
    assert [s for s, _, _ in outcomes] == [200] * 20
    right = sum(_label(a) == labels[i] for i, (_, a, _) in enumerate(outcomes))
    assert right >= 18, f"{right}/20 held-out digits right"  # the classifier's held-out accuracy is 0.98
    answer = outcomes[0][1]
    assert answer["model_name"] == "pipeline"
    assert {o["name"]: o["shape"] for o in answer["outputs"]} == {"LABEL": [1, 1], "PROBS": [1, 10]}
    assert deployment_status() == "HEALTHY"
    timings["healthy_median_s"] = round(sorted(t for _, _, t in outcomes)[10], 4)


def test_bad_input_is_400_and_never_opens(app, digits):
    images, _ = digits
    wrong_shape = json.dumps(
        {"inputs": [{"name": "IMAGE", "shape": [1, 4, 16], "datatype": "UINT8", "data": [0] * 64}]}
    ).encode()
    for _ in range(2 * FAILURE_THRESHOLD):
        status, answer, _ = post(app, wrong_shape)
        assert (status, answer["code"]) == (400, "INVALID_ARGUMENT"), answer
    status, answer, _ = post(app, b"{not json")
    assert status == 400 and "bad request body" in answer["error"]
    assert post(app, body(images[0]))[0] == 200, "client mistakes must not open the breaker"


# --- faults ---------------------------------------------------------------------------------


def test_hung_model_503_within_the_deadline_then_fast_then_unhealthy_then_recovers(app, triton, digits, timings):
    chaos(triton, "hang")
    started = time.monotonic()
    try:
        outcomes = fault_phase(app, digits, FAILURE_THRESHOLD + 5)
        timings["hang"] = summary(outcomes)
        for status, answer, seconds in outcomes[:FAILURE_THRESHOLD]:
            assert status == 503, (status, answer)
            assert seconds < CLIENT_TIMEOUT_S + SLACK_S, seconds
        assert_rejected_fast(outcomes[FAILURE_THRESHOLD:])
        wait_until(lambda: deployment_status() == "UNHEALTHY", 30, "Ray Serve marking the deployment UNHEALTHY")
        timings["hang_unhealthy_after_s"] = round(time.monotonic() - started, 2)
        without_replica(app, digits, timings, "hang")
    finally:
        chaos(triton, "clear")
    wait_recovered(app, digits, timings, "hang", time.monotonic())


def test_frozen_server_503_at_the_client_deadline_then_fast_then_unhealthy_then_recovers(app, triton, digits, timings):
    os.kill(triton.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        outcomes = fault_phase(app, digits, FAILURE_THRESHOLD + 5)
        timings["sigstop"] = summary(outcomes)
        for status, answer, seconds in outcomes[:FAILURE_THRESHOLD]:
            assert status == 503, (status, answer)
            assert f"did not answer within timeout_ms={int(CLIENT_TIMEOUT_S * 1000)}" in answer["error"], answer
            assert CLIENT_TIMEOUT_S - 0.1 < seconds < CLIENT_TIMEOUT_S + SLACK_S, seconds
        assert_rejected_fast(outcomes[FAILURE_THRESHOLD:])
        wait_until(lambda: deployment_status() == "UNHEALTHY", 30, "Ray Serve marking the deployment UNHEALTHY")
        timings["sigstop_unhealthy_after_s"] = round(time.monotonic() - started, 2)
        without_replica(app, digits, timings, "sigstop")
    finally:
        os.kill(triton.pid, signal.SIGCONT)
    wait_recovered(app, digits, timings, "sigstop", time.monotonic())


def test_killed_server_503_at_once_then_unhealthy_then_recovers_on_restart(app, triton, digits, timings):
    os.killpg(triton.pid, signal.SIGKILL)
    triton.server.process.wait()
    started = time.monotonic()
    try:
        outcomes = fault_phase(app, digits, FAILURE_THRESHOLD + 5)
        timings["sigkill"] = summary(outcomes)
        assert [s for s, _, _ in outcomes] == [503] * len(outcomes), summary(outcomes)
        assert all(t < CLIENT_TIMEOUT_S for _, _, t in outcomes), summary(outcomes)
        assert_rejected_fast(outcomes[FAILURE_THRESHOLD:])
        wait_until(lambda: deployment_status() == "UNHEALTHY", 30, "Ray Serve marking the deployment UNHEALTHY")
        timings["sigkill_unhealthy_after_s"] = round(time.monotonic() - started, 2)
        without_replica(app, digits, timings, "sigkill")
    finally:
        timings["triton_restart_s"] = round(triton.restart(), 2)
    wait_recovered(app, digits, timings, "sigkill", time.monotonic())
