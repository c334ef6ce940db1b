"""What every guard placement runs inside a Triton Python stub for one upstream.

Import only inside a Triton Python model. `GuardRuntime` puts together, once
per model instance: the guard's settings (parsed once: GuardSettings), the
server's shared breaker (claimed with those settings: a guard of another
model with other settings fails its load here, unless no live process runs
that model as a guard any more: guard/holders.py), the guard itself
(triton_guard.guard.core.Guard: the policy, bulkhead workers, deadlines),
active recovery (a prober thread and the `ProbeSample` it probes with), the
healer of a dead upstream stub, the drift tap, and the metrics publisher
thread. The placements add how the upstream is called:

* backends/bls.py: a BLS call to another model (the guard step, and the
  library call inside a user's model);
* backends/guard/in_process.py: the model's own execute, in this stub.

Everything a placement uses here is public.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Mapping

import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard import metrics as catalogue
from triton_guard.backends.drift_tap import DriftTap
from triton_guard.backends.metrics import MetricsPublisher
from triton_guard.errors import SettingsConflict
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.config import GuardSettings
from triton_guard.guard.core import Guard
from triton_guard.guard.failures import is_stub_dead
from triton_guard.guard.healer import SideHealer
from triton_guard.guard.holders import Holding, is_held
from triton_guard.guard.metrics import MetricsBuffer
from triton_guard.guard.policy import Code, GuardPolicy, GuardResult
from triton_guard.guard.recovery import ActiveRecovery, FileProbeLock, ProbeSample
from triton_guard.guard.shared_state import SharedFileStore, read_claim
from triton_guard.guard.state_dir import default_state_dir
from triton_guard.guard.store import breaker_settings
from triton_guard.periodic import Periodic

METRICS_PUBLISH_S = 1.0  # how often buffered guard metrics reach /metrics
_INSTANCE_SUFFIX = re.compile(r"_\d+(?:_\d+)?$")  # <model>_<group>_<index>

Probe = Callable[[float], object]  # probe(timeout_s) -> an answer; a str answer is a failure


def answer_error(answer: object) -> str | None:
    """A str answer is the upstream's error message (BLS reports errors inside the response)."""
    return answer if isinstance(answer, str) else None


def server_http_url() -> str:
    """This server's HTTP endpoint, as `triton-guard serve` tells its stubs (defaults.HTTP_URL_ENV)."""
    return os.environ.get(defaults.HTTP_URL_ENV, f"http://localhost:{defaults.HTTP_PORT}")


def side_healer(model: str, min_interval_s: float) -> SideHealer:
    """The healer of `model`: reloads through this server's repository API, with its key, beside the caller."""
    return SideHealer(
        model,
        http_url=server_http_url(),
        api_key=os.environ.get(defaults.API_KEY_ENV),
        min_interval_s=min_interval_s,
        state_dir=default_state_dir(),
        log=pb_utils.Logger.log_warn,
    )


def parameters_of(model_config: Mapping) -> dict[str, str]:
    """A model config's `parameters` (from initialize's args["model_config"], JSON) as plain strings."""
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def model_of_instance(instance_name: str) -> str:
    """The model name of an instance name (<model>_<group>_<index>)."""
    return _INSTANCE_SUFFIX.sub("", instance_name)


def arrival_s(request) -> float | None:
    """When the request entered the pipeline (time.monotonic seconds), if a step before stamped it."""
    for tensor in request.inputs():
        if tensor.name() == defaults.ARRIVAL_INPUT:
            return stamp_s(tensor)
    return None


def stamp_s(tensor) -> float | None:
    """The arrival stamp tensor's time in seconds (it holds CLOCK_MONOTONIC ns, one per row: the earliest)."""
    if tensor is None:
        return None
    stamps = tensor.as_numpy()
    return (stamps.item(0) if stamps.size == 1 else int(stamps.min())) / 1e9


class GuardRuntime:
    """One upstream behind a breaker, a bulkhead and a hard deadline, inside this stub.

    `make_probe()` returns the call active recovery sends while the breaker is
    OPEN (`probe(timeout_s)`), or None while the placement has nothing to
    probe with yet. `repository` (the model repository's root) resolves a
    relative drift_reference.
    """

    def __init__(
        self,
        upstream: str,
        settings: GuardSettings,
        *,
        make_probe: Callable[[], Probe | None],
        instance_name: str = "",
        repository: Path | None = None,
    ) -> None:
        self.upstream = upstream  # the model the calls go to (the healer reloads this one)
        # What the breaker, its metrics and messages are called (breaker_name; else the upstream's name).
        self.name = name = settings.name_for(upstream)
        self.settings = settings
        self.config = settings.config
        self.instance_name = instance_name or upstream
        self.model_name = model_of_instance(instance_name) or f"guard of {upstream}"
        self.served = False  # set by the first execute: the threads talk to the server from then on
        self.store = SharedFileStore(default_state_dir(), report=pb_utils.Logger.log_warn)
        self._claim(name, breaker_settings(self.config))
        self.breaker = CircuitBreaker(name, self.config, self.store)
        self.events = MetricsBuffer()
        self.guard = Guard(GuardPolicy(name, self.config, self.breaker, settings.classifier, events=self.events))
        self.healer: SideHealer | None = None
        if settings.heal_dead_upstream:
            # Through Triton's repository API, from a thread of its own: no stub's request path waits.
            self.healer = side_healer(upstream, self.config.recovery_s)
        self.probe_sample: ProbeSample = ProbeSample(enabled=self.config.probe_interval_ms > 0)
        self.recovery = ActiveRecovery(
            self.breaker,
            make_probe,
            answer_error,
            FileProbeLock(os.path.join(default_state_dir(), f"probe-{name}.lock")),
            on_transition=self._probe_transition,
        )
        self.drift = DriftTap.for_config(name, settings.drift, repository) if settings.drift else None
        self.metrics = MetricsPublisher(model=name)
        self._damage_published: dict[str, int] = {}
        self._threads = [
            Periodic(f"guard-metrics-{name}", METRICS_PUBLISH_S, self.publish_metrics,
                     may_run=lambda: self.served, report=pb_utils.Logger.log_warn),
        ]  # fmt: skip
        if self.recovery.enabled:
            self._threads.append(
                Periodic(f"guard-probe-{name}", self.recovery.interval_s, self.recovery.probe_once,
                         may_run=lambda: self.served, report=pb_utils.Logger.log_warn)
            )  # fmt: skip
        for thread in self._threads:
            thread.start()
        # pb_utils.TritonError exists only once the stub runs, not at import.
        self._error_codes = {
            Code.UNAVAILABLE: pb_utils.TritonError.UNAVAILABLE,
            Code.INVALID_ARG: pb_utils.TritonError.INVALID_ARG,
            Code.INTERNAL: pb_utils.TritonError.INTERNAL,
        }

    # --- the request path -----------------------------------------------------------

    def error_response(self, result: GuardResult):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(result.message, self._error_codes[result.code]))

    def seen_error(self, message: str) -> None:
        """An upstream's error message: a dead stub is healed, even when seen on a call the guard gave up on."""
        if self.healer is not None and is_stub_dead(message):
            self.healer.request()  # a thread beside this call: returns at once

    # --- beside it -----------------------------------------------------------------

    def publish_metrics(self) -> None:
        """The buffered events and the current gauges onto /metrics (the publisher thread, once a second)."""
        delta, m = self.events.drain(), self.metrics
        for reason, n in delta.rejections.items():
            m.increment(catalogue.REJECTIONS, n, reason=reason)
        for reason, n in delta.failures.items():
            m.increment(catalogue.UPSTREAM_FAILURES, n, reason=reason)
        for state, n in delta.transitions.items():
            m.increment(catalogue.BREAKER_TRANSITIONS, n, to=state)
        for kind, total in list(self.store.damage.items()):
            m.increment(catalogue.STATE_DAMAGE, total - self._damage_published.get(kind, 0), kind=kind)
            self._damage_published[kind] = total
        m.add_observations(catalogue.UPSTREAM_CALL_SECONDS, delta.call_seconds)
        # The breaker is one per server: every instance publishes the same value.
        snapshot = self.breaker.snapshot()
        m.set(catalogue.BREAKER_STATE, int(snapshot.state))
        m.set(catalogue.BREAKER_OVERRIDE, int(snapshot.override))
        m.set(catalogue.INFLIGHT_CALLS, self.guard.inflight, instance=self.instance_name)

    def _claim(self, name: str, settings: Mapping[str, object]) -> None:
        """Hold the breaker (guard/holders.py) and claim it; a claimant no live process holds does not block.

        Claims outlive models (a guard unguarded or replaced on a running
        server, one whose load failed): on a conflict, the claimants that no
        live process holds are dropped, logged, and the claim is made again.
        Held before the claim, so two guards loading at once see each other.
        """
        directory = default_state_dir()
        holding = Holding(directory, name, self.model_name)
        try:
            try:
                self.store.claim(name, self.model_name, settings)
            except SettingsConflict:
                claim = read_claim(directory, name) or {}
                gone = [m for m in claim.get("models", []) if m != self.model_name and is_held(directory, name, m) is False]
                if not gone:
                    raise
                pb_utils.Logger.log_warn(
                    f"guard model '{self.model_name}': breaker '{name}' was claimed with other settings by "
                    f"{', '.join(repr(m) for m in gone)}, which no process runs as a guard any more: claim dropped")
                self.store.claim(name, self.model_name, settings, gone=gone)
        except BaseException:
            holding.release()
            raise
        self.holding = holding

    def _probe_transition(self, transition) -> None:
        self.events.transitioned(transition)
        pb_utils.Logger.log_info(
            f"guard: a recovery probe of '{self.name}' was answered; breaker {transition.to_state.name}"
        )

    def close(self) -> None:
        for thread in self._threads:
            thread.stop()
        if self.drift is not None:
            self.drift.close()
        self.guard.close()
        self.holding.release()
