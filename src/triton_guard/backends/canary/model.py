"""The `canary` Python-based backend: "ready" means the model really answers right.

One call runs every check (triton_guard.canary.checks) within a deadline and
returns READY and a JSON REPORT. A background thread samples memory and the
server's metrics every `sample_interval_ms` (the leak trend and the stall
detector need history) and runs the full check every `interval_ms`, so the
canary's metrics stay fresh between probes. This file gathers the facts;
the verdicts live in triton_guard.canary.
"""

import json
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard import defaults, promtext
from triton_guard import metrics as catalogue
from triton_guard.backends import metric_families
from triton_guard.backends.guard.in_process import heal_dead_stub
from triton_guard.canary import checks as canary
from triton_guard.canary import memory
from triton_guard.guard.breaker import BreakerSnapshot
from triton_guard.canary.goldens import GOLDENS_DIR, Golden, compare
from triton_guard.pins import load_pins, observe_runtime
from triton_guard.guard.shared_state import SharedFileStore, default_state_dir, read_json_state


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
        try:
            self.config = canary.CanaryConfig.from_parameters(params)
        except canary.CanaryConfigError as exc:
            raise pb_utils.TritonModelException(f"canary model '{model_config['name']}': {exc}") from None
        self.model_dir = Path(args["model_repository"])
        self.http_url = os.environ.get(defaults.HTTP_URL_ENV)
        self.metrics_url = os.environ.get(defaults.METRICS_URL_ENV)
        self.store = SharedFileStore(default_state_dir())
        self.trend = memory.LeakTrend(
            self.config.trend_window_s, self.config.trend_min_samples, self.config.trend_min_span_s)
        self.stall = canary.StallDetector()
        self._device_class = None if self.config.device_class == "auto" else self.config.device_class
        self._goldens = {}
        # Observed once, here: importing torch takes a second; probes must not wait for it.
        self._runtime = observe_runtime()
        self._facts_lock = threading.Lock()  # trend and stall are fed by two threads
        self._golden_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="canary-golden")
        self._golden_call = None  # the last golden inference; a hung one is never doubled
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="canary-run")
        self._run_lock = threading.Lock()
        self._current_run = None
        self._metrics = _CanaryMetrics()
        self._stop = threading.Event()
        self._served = threading.Event()  # the first probe arrived: the model is up
        self._background = threading.Thread(target=self._background_loop, name="canary-sampler", daemon=True)
        self._background.start()

    # --- Triton ---------------------------------------------------------------

    def execute(self, requests):
        self._served.set()
        responses = []
        for request in requests:
            try:
                config = self.config.with_call_options(_options(request))
            except (canary.CanaryConfigError, ValueError) as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"canary OPTIONS: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            report = self.run_shared(config)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("READY", np.array([report.ready], dtype=bool)),
                pb_utils.Tensor("REPORT", np.array([report.to_json().encode()], dtype=object)),
            ]))
        return responses

    def finalize(self):
        self._stop.set()
        self._golden_worker.shutdown(wait=False, cancel_futures=True)
        self._runner.shutdown(wait=False, cancel_futures=True)

    # --- runs -------------------------------------------------------------------

    def run_shared(self, config):
        """A run with this config; a caller arriving during one joins it instead of queueing."""
        with self._run_lock:
            run = self._current_run
            if run is None or run[1].done() or run[0] != config:
                run = (config, self._runner.submit(self._run, config))
                self._current_run = run
        try:
            return run[1].result(timeout=2 * config.deadline_ms / 1000)
        except FutureTimeout:
            return canary.CanaryReport(
                [canary.not_run("canary", "an earlier run is still busy past its deadline")],
                2 * config.deadline_ms / 1000, self._device_class or "unknown")

    def _run(self, config):
        started = time.monotonic()
        deadline = started + config.deadline_ms / 1000
        samples, metrics_error = self._fetch_metrics(deadline)
        device_class = self._resolve_device_class(samples)
        checks = [self._golden_check(device_class, deadline)]  # first: it is also the breaker's trial call
        checks.append(canary.check_liveness({m: pb_utils.is_model_ready(m) for m in config.models}))
        reading, memory_error = self._read_memory(device_class, samples)
        if reading is not None:
            floor = memory.floor_bytes(reading.total_bytes, config.headroom_floor_fraction, config.headroom_floor_mb)
            with self._facts_lock:
                self.trend.add(time.monotonic(), reading.free_bytes)
                trend, n = self.trend.trend(floor), len(self.trend)
            checks.append(canary.check_headroom(reading, floor))
            checks.append(canary.check_trend(
                trend, config.trend_horizon_s, n, config.trend_min_samples, config.trend_min_span_s))
        else:
            checks.append(canary.check_headroom(None, 0, memory_error))
            checks.append(canary.not_run("leak_trend", memory_error or "no memory reading"))
        checks.append(self._stall_check(config, samples, metrics_error))
        checks.append(canary.check_breakers(self._breakers(), config.half_open_not_ready, time.monotonic()))
        checks.append(self._pins_check(config, device_class))
        checks.append(canary.check_drift(read_json_state(self.store.directory, defaults.DRIFT_STATE_FILE),
                                         config.drift_fails_readiness))
        report = canary.CanaryReport(checks, time.monotonic() - started, device_class)
        if config == self.config:  # a probe's one-off thresholds are not the server's state
            self._metrics.publish(report, reading, self.trend_snapshot(reading, config))
        return report

    # --- facts ------------------------------------------------------------------

    def _fetch_metrics(self, deadline):
        if not self.metrics_url:
            return None, f"no metrics URL (set {defaults.METRICS_URL_ENV})"
        try:
            return promtext.fetch(self.metrics_url, max(deadline - time.monotonic(), 0.05)), None
        except Exception as exc:  # unreachable, timeout, unparsable: the check says so
            return None, f"metrics unavailable: {exc}"

    def _resolve_device_class(self, samples):
        if self._device_class is None and samples is not None:
            gpu = memory.read_gpu(promtext.sum_by_name(samples))
            self._device_class = "gpu" if gpu is not None else "cpu"
        return self._device_class or "cpu"

    def _read_memory(self, device_class, samples):
        if device_class == "gpu":
            if samples is None:
                return None, "GPU memory unknown: server metrics unavailable"
            reading = memory.read_gpu(promtext.sum_by_name(samples))
            return reading, None if reading else "no GPU memory gauges on /metrics"
        try:
            return memory.read_system_memory(), None
        except (OSError, ValueError, KeyError) as exc:
            return None, f"memory unreadable: {exc}"

    def _golden_check(self, device_class, deadline):
        golden = self._golden(device_class)
        if isinstance(golden, str):
            return canary.check_golden(None, golden)
        previous = self._golden_call
        if previous is not None and not previous[1].done():
            return canary.check_golden(
                None, f"the previous golden inference through '{self.config.pipeline_model}' is still "
                f"unanswered after {time.monotonic() - previous[0]:.1f} s")
        call = (time.monotonic(), self._golden_worker.submit(self._golden_inference, golden))
        self._golden_call = call
        budget = max(deadline - time.monotonic(), 0.0)
        try:
            labels, probs = call[1].result(timeout=budget)
        except FutureTimeout:
            return canary.check_golden(
                None, f"no answer from '{self.config.pipeline_model}' within the "
                f"{self.config.deadline_ms} ms deadline")
        except Exception as exc:
            return canary.check_golden(None, f"'{self.config.pipeline_model}' failed: {exc}")
        return canary.check_golden(compare(golden, labels, probs))

    def _golden_inference(self, golden):
        request = pb_utils.InferenceRequest(
            model_name=self.config.pipeline_model,
            inputs=[pb_utils.Tensor("IMAGE", golden.images)],
            requested_output_names=["LABEL", "PROBS"],
        )
        response = request.exec()
        if response.has_error():
            message = response.error().message()
            # A model guarded in-process cannot heal its own dead stub: the canary does.
            heal_dead_stub(message, self.config.models, self.config.interval_ms / 1000)
            raise RuntimeError(message)
        return (pb_utils.get_output_tensor_by_name(response, "LABEL").as_numpy(),
                pb_utils.get_output_tensor_by_name(response, "PROBS").as_numpy())

    def _golden(self, device_class):
        if device_class not in self._goldens:
            path = self.model_dir / GOLDENS_DIR / f"{device_class}.json"
            try:
                self._goldens[device_class] = Golden.load(path)
            except (OSError, ValueError, KeyError) as exc:
                return f"no usable goldens for device class '{device_class}' ({exc}); run scripts/make_goldens.py"
        return self._goldens[device_class]

    def _stall_check(self, config, samples, metrics_error):
        if samples is None:
            return canary.check_stall(None, config.stall_s, metrics_error)
        pending, _ = self._feed_stall(samples)
        with self._facts_lock:
            stalled = self.stall.stalled(time.monotonic(), config.stall_s, pending)
        return canary.check_stall(stalled, config.stall_s)

    def _feed_stall(self, samples):
        pending = promtext.by_label(samples, "nv_inference_pending_request_count", "model")
        executed = promtext.by_label(samples, "nv_inference_exec_count", "model")
        with self._facts_lock:
            self.stall.update(time.monotonic(), pending, executed)
        return pending, executed

    def _breakers(self):
        snapshots = []
        for name in self.store.list_breakers():
            record = self.store.read(name)
            if record is not None:
                snapshots.append(BreakerSnapshot.from_record(name, record))
        return snapshots

    def _pins_check(self, config, device_class):
        if self._runtime.get("tritonserver") is None:  # HTTP is not up while models load
            self._runtime["tritonserver"] = self._server_version()
        expected = canary.expected_runtime(load_pins(), device_class)
        observed = {k: self._runtime.get(k) for k in expected}
        return canary.check_pins(expected, observed, config.strict_pins)

    def _server_version(self):
        if not self.http_url:
            return None
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2", timeout=1) as response:
                return json.loads(response.read())["version"]
        except Exception:
            return None

    def trend_snapshot(self, reading, config):
        if reading is None:
            return None
        floor = memory.floor_bytes(reading.total_bytes, config.headroom_floor_fraction, config.headroom_floor_mb)
        with self._facts_lock:
            return floor, self.trend.trend(floor)

    # --- background -----------------------------------------------------------------

    def _server_ready(self):
        """Via HTTP, not pb_utils: no stub-to-server call from this thread during start-up."""
        if not self.http_url:
            return self._served.is_set()
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as response:
                return response.status == 200
        except Exception:
            return False

    def _background_loop(self):
        next_run = time.monotonic() + self.config.interval_ms / 1000
        server_ready = False
        while not self._stop.wait(self.config.sample_interval_ms / 1000):
            try:
                # History starts once the server serves: loading models is not a leak.
                server_ready = server_ready or self._server_ready()
                if not server_ready:
                    continue
                samples, _ = self._fetch_metrics(time.monotonic() + 1.0)
                device_class = self._resolve_device_class(samples)
                reading, _ = self._read_memory(device_class, samples)
                if reading is not None:
                    with self._facts_lock:
                        self.trend.add(time.monotonic(), reading.free_bytes)
                if samples is not None:
                    self._feed_stall(samples)
                if time.monotonic() >= next_run:
                    next_run = time.monotonic() + self.config.interval_ms / 1000
                    self.run_shared(self.config)
            except Exception as exc:  # the sampler must outlive any one bad sample
                if server_ready:  # (no stub-to-server call before: see _server_ready)
                    pb_utils.Logger.log_warn(f"canary sampler: {exc}")


def _options(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "OPTIONS")
    if tensor is None:
        return {}
    raw = tensor.as_numpy().reshape(-1)[0]
    options = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if not isinstance(options, dict):
        raise ValueError("expected a JSON object")
    return options


class _CanaryMetrics:
    """The canary's verdicts on Triton's /metrics (families kept alive on self)."""

    def __init__(self):
        self.families = [
            metric_families.family(metric)
            for metric in (
                catalogue.CANARY_READY,
                catalogue.CANARY_CHECK_OK,
                catalogue.MEMORY_FREE_BYTES,
                catalogue.MEMORY_FLOOR_BYTES,
                catalogue.MEMORY_SECONDS_TO_FLOOR,
                catalogue.CANARY_RUN_SECONDS,
            )
        ]
        ready, checks, free, floor, to_floor, seconds = self.families
        self.ready = ready.Metric(labels={})
        self.checks_family = checks
        self.checks = {}
        self.free_family = free
        self.free = {}
        self.floor = floor.Metric(labels={})
        self.to_floor = to_floor.Metric(labels={})
        self.seconds = seconds.Metric(labels={})
        self._lock = threading.Lock()

    def publish(self, report, reading, trend_snapshot):
        with self._lock:
            self.ready.set(1.0 if report.ready else 0.0)
            self.seconds.set(report.duration_s)
            for check in report.checks:
                if check.name not in self.checks:
                    self.checks[check.name] = self.checks_family.Metric(labels={"check": check.name})
                self.checks[check.name].set(1.0 if check.ok else 0.0)
            if reading is not None:
                if reading.source not in self.free:
                    self.free[reading.source] = self.free_family.Metric(labels={"source": reading.source})
                self.free[reading.source].set(float(reading.free_bytes))
            if trend_snapshot is not None:
                floor, trend = trend_snapshot
                self.floor.set(float(floor))
                self.to_floor.set(float("inf") if trend is None else float(trend.seconds_to_floor))
