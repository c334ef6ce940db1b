"""The `canary` Python-based backend: "ready" means the models really answer right.

A thin adapter: triton_guard.canary.runner.Canary decides what is checked and
when (runs, golden inferences, the sampler); this file gives it the server's
facts that only pb_utils can reach (BLS inference, model readiness, logging,
metrics on Triton's /metrics) and translates requests and reports.
"""

import json
import os
import sys
from pathlib import Path

# As backends/guard/model.py: import the triton_guard this file ships in
# (Triton's embedded Python ignores PYTHONPATH).
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
if _PACKAGE_ROOT not in sys.path:
    sys.path.insert(0, _PACKAGE_ROOT)

import numpy as np  # noqa: E402  (after the path fix above, as the imports below)
import triton_python_backend_utils as pb_utils  # noqa: E402

from triton_guard import defaults
from triton_guard import metrics as catalogue
from triton_guard.backends.metrics import MetricsPublisher
from triton_guard.backends.guard.in_process import heal_dead_stub
from triton_guard.backends.runtime import parameters_of, server_http_url
from triton_guard.canary import memory
from triton_guard.canary.checks import metric_labels
from triton_guard.canary.config import CanaryConfig, CanaryConfigError
from triton_guard.canary.overload import is_overloaded
from triton_guard.canary.golden_store import GoldenStore, repositories_from_environment
from triton_guard.canary.instance_metrics import InstanceMetricUpdates
from triton_guard.canary.instances import InstanceSampler
from triton_guard.canary.leak_reload import side_reload
from triton_guard.canary.runner import Canary
from triton_guard.canary.server_http import HttpServer
from triton_guard.guard.breaker import BreakerSnapshot
from triton_guard.drift.state import read_states
from triton_guard.guard.holders import is_held
from triton_guard.guard.shared_state import SharedFileStore, read_claim
from triton_guard.guard.state_dir import default_state_dir
from triton_guard.pins import observe_runtime


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        try:
            config = CanaryConfig.from_parameters(parameters_of(model_config))
        except CanaryConfigError as exc:
            raise pb_utils.TritonModelException(f"canary model '{model_config['name']}': {exc}") from None
        repositories = repositories_from_environment(os.environ, Path(args["model_repository"]))
        # Observed once, here: importing torch takes a second; probes must not wait for it.
        runtime = observe_runtime()
        facts = _TritonFacts(config.interval_ms / 1000)
        # Per-instance memory: this stub's parent is tritonserver; in-process guards on GPU write their
        # allocator readings into the state directory; leak_reload reloads through the repository API.
        reload = side_reload(facts.http_url, os.environ.get(defaults.API_KEY_ENV), facts.store.directory,
                             config.interval_ms / 1000, pb_utils.Logger.log_warn) if config.leak_reload else None
        self.canary = Canary(config, facts, GoldenStore(repositories), runtime, instances=InstanceSampler(os.getppid()),
                             allocator_dir=facts.store.directory, reload=reload)
        self.canary.start()

    def execute(self, requests):
        self.canary.mark_served()
        responses = []
        for request in requests:
            try:
                config = self.canary.config.with_call_options(_options(request))
            except (CanaryConfigError, ValueError) as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"canary OPTIONS: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            report = self.canary.run_shared(config)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("READY", np.array([report.ready], dtype=bool)),
                pb_utils.Tensor("REPORT", np.array([report.to_json().encode()], dtype=object)),
            ]))
        return responses

    def finalize(self):
        if not self.canary.close():
            pb_utils.Logger.log_warn("canary: a run or a golden inference was still busy at unload")


def _options(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "OPTIONS")
    if tensor is None:
        return {}
    raw = tensor.as_numpy().reshape(-1)[0]
    options = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if not isinstance(options, dict):
        raise ValueError("expected a JSON object")
    return options


class _TritonFacts(HttpServer):
    """triton_guard.canary.runner.ServerFacts inside a Triton Python stub."""

    def __init__(self, heal_interval_s):
        super().__init__(server_http_url(),
                         os.environ.get(defaults.METRICS_URL_ENV))
        self.heal_interval_s = heal_interval_s
        self.store = SharedFileStore(default_state_dir())
        self.metrics = _CanaryMetrics()

    def is_model_ready(self, model):
        return pb_utils.is_model_ready(model)

    def infer(self, model, inputs, outputs):
        request = pb_utils.InferenceRequest(
            model_name=model,
            inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
            requested_output_names=outputs,
            parameters={defaults.PROBE_PARAMETER: True},  # golden answers stay out of every drift window
        )
        response = request.exec()
        if response.has_error():
            message = response.error().message()
            # A model guarded in-process cannot heal its own dead stub: the canary reloads it.
            heal_dead_stub(message, self.heal_interval_s)
            raise RuntimeError(message)
        answer = {}
        for name in outputs:
            tensor = pb_utils.get_output_tensor_by_name(response, name)
            if tensor is not None:
                answer[name] = tensor.as_numpy()
        return answer

    def breakers(self):
        snapshots = []
        for name in self.store.list_breakers():
            record = self.store.read(name)
            if record is not None:
                snapshots.append(BreakerSnapshot.from_record(name, record))
        return snapshots

    def breaker_claimants(self, name):
        claim = read_claim(self.store.directory, name)
        return list(claim.get("models", [])) if claim else []

    def breaker_held(self, name, model):
        return is_held(self.store.directory, name, model)

    def drift_state(self):
        return read_states(self.store.directory)

    def system_memory(self):
        return memory.read_system_memory()

    def warn(self, message):
        pb_utils.Logger.log_warn(message)

    def publish(self, report, reading, trend_snapshot):
        self.metrics.publish(report, reading, trend_snapshot)


class _CanaryMetrics:
    """The canary's verdicts on Triton's /metrics, through the one publisher of every backend."""

    def __init__(self):
        self.metrics = MetricsPublisher()
        self.instance_updates = InstanceMetricUpdates()  # per-instance memory (canary/instance_metrics.py)

    def publish(self, report, reading, trend_snapshot):
        m = self.metrics
        m.set(catalogue.CANARY_READY, 1.0 if report.ready else 0.0)
        m.set(catalogue.CANARY_RUN_SECONDS, report.duration_s)
        m.set(catalogue.CANARY_OVERLOADED, 1.0 if any(is_overloaded(c) for c in report.checks) else 0.0)
        for check in report.checks:
            m.set(catalogue.CANARY_CHECK_OK, 1.0 if check.ok else 0.0, **metric_labels(check.name))
        if reading is not None:
            m.set(catalogue.MEMORY_FREE_BYTES, float(reading.free_bytes), source=reading.source)
        if trend_snapshot is not None:
            floor, trend = trend_snapshot
            m.set(catalogue.MEMORY_FLOOR_BYTES, float(floor))
            m.set(catalogue.MEMORY_SECONDS_TO_FLOOR, float("inf") if trend is None else float(trend.seconds_to_floor))
        for metric, labels, op, value in self.instance_updates.updates(report):
            if op == "set":
                m.set(metric, value, **labels)
            else:
                m.increment(metric, value, **labels)
