"""triton_guard.canary.runner with a fake server (orchestration, goldens from the golden store), and the default canary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from triton_guard import defaults
from triton_guard.canary.checks import expected_runtime
from triton_guard.canary.config import CanaryConfig
from triton_guard.canary.goldens import record_case
from triton_guard.canary.memory import MemoryReading
from triton_guard.pins import load_pins
from tests.unit.test_canary_report import _strict_json

MIB = 1024 * 1024
PINS = load_pins()


# --- the orchestration (triton_guard.canary.runner) with a fake server ----------------

import threading  # noqa: E402

from tests.fakes import FakeClock  # noqa: E402
from triton_guard import promtext  # noqa: E402
from triton_guard.canary.golden_check import NO_GOLDENS_NOTE  # noqa: E402
from triton_guard.canary.golden_store import GoldenStore, repositories_from_environment  # noqa: E402
from triton_guard.canary.goldens import case_path  # noqa: E402
from triton_guard.canary.runner import Canary  # noqa: E402

_METRICS = """\
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="add_sub",version="1"} 0
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="add_sub",version="1"} 3
"""
ALL_CHECKS_BUT_GOLDEN = ["liveness", "headroom", "leak_trend", "stall", "breakers", "runtime_pins", "drift", "overload"]


def _add_sub(inputs):
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    return {"OUTPUT0": (a + b).astype(np.float32), "OUTPUT1": (a - b).astype(np.float32)}


def _tokenize(inputs):
    texts = inputs["TEXT"].reshape(-1).tolist()
    return {"UPPER": np.array([t.upper() for t in texts], dtype=object).reshape(-1, 1),
            "LENGTH": np.array([len(t) for t in texts], dtype=np.int32).reshape(-1, 1)}


GOLDEN_INPUTS = {
    "add_sub": {"INPUT0": np.array([1, 2, 3, 4], np.float32), "INPUT1": np.array([0.5, 0.25, 0, -1], np.float32)},
    "tokenize": {"TEXT": np.array([[b"hello"], ["h\u00e9".encode()]], dtype=object)},
}
MODELS = {"add_sub": _add_sub, "tokenize": _tokenize}


class FakeFacts:
    """ServerFacts of a healthy CPU server whose models answer with `answers[model](inputs)`."""

    metrics_url = "http://localhost:9102/metrics"

    def __init__(self, answers=None, states=None):
        self.answers = dict(answers if answers is not None else MODELS)
        self.states = states if states is not None else {m: ("READY", "") for m in self.answers}
        self.infer_calls: list[tuple[str, dict, list]] = []
        self.published = []
        self.warnings = []
        self.ready_asked = []

    def fetch_metrics(self, timeout_s):
        return promtext.parse(_METRICS)

    def model_states(self, timeout_s):
        return self.states

    def model_config(self, model, timeout_s):
        return {"name": model, "max_batch_size": 8, "instance_group": [{"count": 1}]}

    def is_model_ready(self, model):
        self.ready_asked.append(model)
        return self.states.get(model, ("", ""))[0] == "READY"

    def infer(self, model, inputs, outputs):
        self.infer_calls.append((model, dict(inputs), list(outputs)))
        return self.answers[model](inputs)

    def breakers(self):
        return []

    def drift_state(self):
        return None

    def system_memory(self):
        return MemoryReading("host", 1000 * MIB, 500 * MIB)

    def server_version(self):
        return PINS.container.triton_server

    def server_ready(self):
        return True

    def warn(self, message):
        self.warnings.append(message)

    def publish(self, report, reading, trend_snapshot):
        self.published.append(report)



class FactsWithBreakers(FakeFacts):
    """Breakers in the state directory, claimed by guard models the server may or may not still run."""

    def __init__(self, breakers, claimants, held):
        super().__init__()
        self._breakers, self._claimants, self._held = breakers, claimants, held
        self.guard_asked = []

    def breakers(self):
        return self._breakers

    def breaker_claimants(self, name):
        return self._claimants.get(name, [])

    def breaker_held(self, name, model):
        self.guard_asked.append(model)
        return self._held[model]

def _record(repository: Path, model: str, answer_of=None, case: str = "basic", device: str = "cpu") -> Path:
    inputs = GOLDEN_INPUTS[model]
    answer = (answer_of or MODELS[model])(inputs)
    golden = record_case(model, case, inputs, answer, answer, device, {}, 1e-4, {})
    path = case_path(repository / model, case)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(golden.to_json())
    return path


def _canary(repository: Path, facts: FakeFacts | None = None, **config) -> Canary:
    runtime = expected_runtime(PINS, "cpu")
    return Canary(CanaryConfig(**config), facts or FakeFacts(), GoldenStore([repository]), runtime, clock=FakeClock(100.0))


def test_with_no_goldens_anywhere_every_other_check_runs_and_the_report_says_so(tmp_path):
    report = _canary(tmp_path).run(CanaryConfig())
    assert [c.name for c in report.checks] == ["golden"] + ALL_CHECKS_BUT_GOLDEN
    assert report.ready, report.failed
    assert report.checks[0].reason == NO_GOLDENS_NOTE and "no golden inference configured" in NO_GOLDENS_NOTE
    assert report.notes == [NO_GOLDENS_NOTE]


def test_every_model_with_goldens_gets_its_own_check_and_gets_its_recorded_inputs(tmp_path):
    _record(tmp_path, "add_sub")
    _record(tmp_path, "tokenize")
    facts = FakeFacts()
    report = _canary(tmp_path, facts).run(CanaryConfig())
    assert [c.name for c in report.checks] == ["golden:add_sub", "golden:tokenize"] + ALL_CHECKS_BUT_GOLDEN
    assert report.ready and report.notes == []
    assert report.checks[0].reason == "case 'basic': bit-exact"
    calls = {model: (inputs, outputs) for model, inputs, outputs in facts.infer_calls}
    np.testing.assert_array_equal(calls["add_sub"][0]["INPUT1"], GOLDEN_INPUTS["add_sub"]["INPUT1"])
    assert calls["tokenize"][0]["TEXT"].tolist() == [[b"hello"], ["h\u00e9".encode()]]
    assert sorted(calls["tokenize"][1]) == ["LENGTH", "UPPER"]


def test_a_wrong_answer_fails_that_models_check_naming_the_output(tmp_path):
    _record(tmp_path, "add_sub")
    _record(tmp_path, "tokenize")
    off_by_one = lambda inputs: {**_add_sub(inputs), "OUTPUT0": _add_sub(inputs)["OUTPUT0"] + 1}  # noqa: E731
    report = _canary(tmp_path, FakeFacts({**MODELS, "add_sub": off_by_one})).run(CanaryConfig())
    assert [c.name for c in report.failed] == ["golden:add_sub"]
    reason = report.failed[0].reason
    assert reason.startswith("case 'basic': OUTPUT0 differs by 1 at [0] (2.5, golden 1.5; tolerance 0.0001)"), reason
    assert "OUTPUT1" not in reason


def test_a_nan_answer_fails_and_the_report_stays_standard_json(tmp_path):
    _record(tmp_path, "add_sub")
    nan = lambda inputs: {**_add_sub(inputs), "OUTPUT1": np.full(4, np.nan, np.float32)}  # noqa: E731
    report = _canary(tmp_path, FakeFacts({"add_sub": nan})).run(CanaryConfig())
    assert report.failed[0].name == "golden:add_sub"
    assert "OUTPUT1 is not finite" in report.failed[0].reason
    assert _strict_json(report.to_json())["ready"] is False


def test_new_goldens_take_effect_at_the_next_run_and_removed_ones_stop(tmp_path):
    canary = _canary(tmp_path)
    assert canary.run(CanaryConfig()).checks[0].name == "golden"
    path = _record(tmp_path, "add_sub")
    assert canary.run(CanaryConfig()).checks[0].name == "golden:add_sub"
    path.unlink()
    assert canary.run(CanaryConfig()).checks[0].name == "golden"


def test_a_changed_golden_file_is_read_again(tmp_path):
    canary = _canary(tmp_path)
    _record(tmp_path, "add_sub")
    assert canary.run(CanaryConfig()).ready
    off = lambda inputs: {**_add_sub(inputs), "OUTPUT0": _add_sub(inputs)["OUTPUT0"] + 1}  # noqa: E731
    path = _record(tmp_path, "add_sub", answer_of=off)  # another expectation, same file
    import os
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse-clock file system
    assert [c.name for c in canary.run(CanaryConfig()).failed] == ["golden:add_sub"]


def test_an_unusable_golden_file_fails_its_models_check_naming_the_file(tmp_path):
    _record(tmp_path, "tokenize")
    bad = case_path(tmp_path / "add_sub", "broken")
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    report = _canary(tmp_path).run(CanaryConfig())
    assert [c.name for c in report.failed] == ["golden:add_sub"]
    assert str(bad) in report.failed[0].reason
    assert next(c for c in report.checks if c.name == "golden:tokenize").ok


def test_goldens_without_this_device_class_fail_saying_how_to_record_them(tmp_path):
    _record(tmp_path, "add_sub", device="gpu")
    report = _canary(tmp_path).run(CanaryConfig())
    assert report.failed[0].name == "golden:add_sub"
    assert "no outputs for device class 'cpu'" in report.failed[0].reason
    assert "triton-guard goldens record --model add_sub" in report.failed[0].reason


def test_the_canary_model_and_files_that_are_not_goldens_are_ignored(tmp_path):
    (tmp_path / "canary" / "goldens").mkdir(parents=True)
    (tmp_path / "canary" / "goldens" / "reference.json").write_text("{}")
    (tmp_path / "add_sub" / "goldens").mkdir(parents=True)
    (tmp_path / "add_sub" / "goldens" / "notes.json").write_text("{}")
    assert GoldenStore([tmp_path]).cases() == {}


def test_a_hung_model_fails_only_its_own_check_by_the_deadline_and_is_not_called_again(tmp_path):
    _record(tmp_path, "add_sub")
    _record(tmp_path, "tokenize")
    release = threading.Event()

    def hung(inputs):
        release.wait(30)
        return _add_sub(inputs)

    facts = FakeFacts({**MODELS, "add_sub": hung})
    canary = _canary(tmp_path, facts, deadline_ms=50)
    try:
        first = canary.run(canary.config)
        assert [c.name for c in first.failed] == ["golden:add_sub"]
        # ... with the evidence that it is not load (canary/overload.py): nothing answered meanwhile.
        assert first.failed[0].reason.startswith("no answer from 'add_sub' within the 50 ms deadline; and 'add_sub' "
                                                 "answered no request")
        second = canary.run(canary.config)
        assert second.failed[0].reason.startswith("the previous golden inference of 'add_sub' is still unanswered")
        assert next(c for c in second.checks if c.name == "golden:tokenize").ok
        assert [m for m, _, _ in facts.infer_calls].count("add_sub") == 1
        assert [m for m, _, _ in facts.infer_calls].count("tokenize") == 2
    finally:
        release.set()
        assert canary.close()


def test_a_model_error_fails_its_check_with_the_servers_message(tmp_path):
    _record(tmp_path, "add_sub")

    def failing(inputs):
        raise RuntimeError("add_sub: injected error")

    report = _canary(tmp_path, FakeFacts({"add_sub": failing})).run(CanaryConfig())
    assert report.failed[0].reason == "'add_sub' failed: add_sub: injected error"


def test_probes_never_add_memory_samples_only_the_sampler_does(tmp_path):
    canary = _canary(tmp_path)
    for _ in range(5):
        canary.run(canary.config)
    assert len(canary.memory) == 0
    for _ in range(3):
        canary.clock.advance(1.0)
        canary.sample()
    assert len(canary.memory) == 3
    canary.run(canary.config)
    assert len(canary.memory) == 3


def test_liveness_covers_every_loaded_model_and_says_why_one_is_not_ready(tmp_path):
    states = {"add_sub": ("READY", ""), "broken": ("UNAVAILABLE", "failed to load: no module named torch")}
    report = _canary(tmp_path, FakeFacts(states=states)).run(CanaryConfig())
    assert [c.name for c in report.failed] == ["liveness"]
    assert report.failed[0].reason == "not ready: broken (UNAVAILABLE: failed to load: no module named torch)"


def test_liveness_of_configured_models_asks_each_one(tmp_path):
    facts = FakeFacts(states={"add_sub": ("READY", "")})
    report = _canary(tmp_path, facts, models=("add_sub", "gone")).run(CanaryConfig(models=("add_sub", "gone")))
    assert facts.ready_asked == ["add_sub", "gone"]
    assert report.failed[0].reason == "not ready: gone"


def test_only_the_servers_own_config_publishes_metrics(tmp_path):
    facts = FakeFacts()
    canary = _canary(tmp_path, facts)
    canary.run(canary.config)
    canary.run(canary.config.with_call_options({"strict_pins": True}))
    assert len(facts.published) == 1


def test_the_report_carries_the_metrics_url_the_canary_uses(tmp_path):
    assert _canary(tmp_path).run(CanaryConfig()).metrics_url == FakeFacts.metrics_url


def test_a_probe_arriving_during_a_run_joins_it(tmp_path):
    _record(tmp_path, "add_sub")
    entered, release = threading.Event(), threading.Event()

    def slow(inputs):
        entered.set()
        release.wait(30)
        return _add_sub(inputs)

    facts = FakeFacts({"add_sub": slow})
    canary = _canary(tmp_path, facts, deadline_ms=10_000)
    reports = []
    first = threading.Thread(target=lambda: reports.append(canary.run_shared(canary.config)))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=lambda: reports.append(canary.run_shared(canary.config)))
    second.start()
    release.set()
    first.join(10)
    second.join(10)
    assert len(reports) == 2 and reports[0] is reports[1]
    assert len(facts.infer_calls) == 1
    assert canary.close()


def test_close_stops_and_joins_the_sampler(tmp_path):
    canary = _canary(tmp_path, sample_interval_ms=1)
    canary.start()
    sampler = canary._sampler
    assert sampler.is_alive()
    assert canary.close(timeout_s=10)
    assert not sampler.is_alive()


def test_goldens_are_looked_for_in_the_listed_repositories_then_the_canarys_own(tmp_path):
    mine, own = tmp_path / "mine", tmp_path / "package"
    (own / "canary").mkdir(parents=True)
    env = {defaults.MODEL_REPOSITORIES_ENV: str(mine)}
    assert repositories_from_environment(env, own / "canary") == [mine.resolve(), own.resolve()]
    assert repositories_from_environment({}, own / "canary") == [own.resolve()]
    assert repositories_from_environment({defaults.MODEL_REPOSITORIES_ENV: str(own)}, own / "canary") == [own.resolve()]


# --- the default canary that `serve` adds ----------------------------------------------

import tomllib  # noqa: E402

from triton_guard.model_config import read_config  # noqa: E402
from triton_guard.server import CANARY_REPOSITORY, CONTROL_REPOSITORY, PACKAGE_DIR, LocalServer  # noqa: E402


def _repositories(cmd):
    """The repositories of a server's command line, but the breakers' control model's (tests/unit/test_breaker_override.py)."""
    return [a.split("=", 1)[1] for a in cmd if a.startswith("--model-repository=") and a != f"--model-repository={CONTROL_REPOSITORY}"]


def test_serve_adds_the_default_canary_only_to_a_repository_without_one(tmp_path):
    assert _repositories(LocalServer(model_repository=tmp_path).command(tmp_path)) == [
        str(tmp_path.resolve()), str(CANARY_REPOSITORY)]
    (tmp_path / "canary").mkdir()
    (tmp_path / "canary" / "config.pbtxt").write_text('name: "canary"\n')
    assert _repositories(LocalServer(model_repository=tmp_path).command(tmp_path)) == [str(tmp_path.resolve())]


def test_the_default_canary_is_a_canary_model_with_default_thresholds():
    config = read_config(CANARY_REPOSITORY / "canary" / "config.pbtxt")
    assert (config.name, config.backend) == ("canary", "canary")
    assert {o.name for o in config.output} == {"READY", "REPORT"}
    assert dict(config.parameters) == {}  # the defaults of triton_guard.defaults
    assert (CANARY_REPOSITORY / "canary" / "1").is_dir()


def test_the_default_canary_is_package_data():
    patterns = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = patterns["tool"]["setuptools"]["package-data"]["triton_guard"]
    shipped = {p.relative_to(PACKAGE_DIR) for pattern in patterns for p in PACKAGE_DIR.glob(pattern)}
    for path in CANARY_REPOSITORY.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert path.relative_to(PACKAGE_DIR) in shipped, path


def _breaker(name, state):
    from triton_guard.guard.breaker import BreakerSnapshot, State

    return BreakerSnapshot(name=name, state=State[state], since=0.0, opened_at=0.0, consecutive_failures=5,
                           calls_in_window=5, failure_rate=1.0, slow_call_rate=0.0, trials_in_flight=0,
                           generation=1, transitions=1)


def test_an_open_breaker_whose_guards_the_server_no_longer_runs_does_not_fail_readiness(tmp_path):
    """Unguarded while OPEN: nothing will call or probe that breaker again; it must not hold the pod out."""
    breakers = [_breaker("left", "OPEN"), _breaker("fine", "CLOSED")]
    claimants = {"left": ["left_guard", "left_inline"], "fine": ["fine_guard"]}
    facts = FactsWithBreakers(breakers, claimants, {"left_guard": False, "left_inline": False})
    report = _canary(tmp_path, facts).run(CanaryConfig())
    assert report.ready, report.failed
    check = {c.name: c for c in report.checks}["breakers"]
    assert "'left' OPEN left by a guard no longer loaded: ignored" in check.reason
    assert facts.guard_asked == ["left_guard", "left_inline"]  # a CLOSED breaker costs no question


def test_an_open_breaker_with_one_guard_still_running_or_unknown_fails_readiness(tmp_path):
    for held in (True, None):  # held; or no holder file (the state directory was rebuilt): nothing says
        facts = FactsWithBreakers([_breaker("left", "OPEN")], {"left": ["left_guard", "left_inline"]},
                                  {"left_guard": False, "left_inline": held})
        report = _canary(tmp_path, facts).run(CanaryConfig())
        assert not report.ready and {c.name: c for c in report.checks}["breakers"].reason == "breaker 'left' OPEN"


def test_an_open_breaker_without_a_claim_fails_readiness(tmp_path):
    facts = FactsWithBreakers([_breaker("left", "OPEN")], {}, {})
    assert not _canary(tmp_path, facts).run(CanaryConfig()).ready
