"""triton_guard.canary.checks: every check's verdict and the stall detector."""

from __future__ import annotations

from pathlib import Path

from triton_guard.canary.checks import (
    StallDetector,
    check_breakers,
    check_headroom,
    check_liveness,
    check_pins,
    check_stall,
    expected_runtime,
)
from triton_guard.canary.goldens import GoldenCase
from triton_guard.canary.memory import MemoryReading
from triton_guard.canary.report import CheckResult
from triton_guard.guard.breaker import BreakerSnapshot, State
from triton_guard.pins import load_pins

MIB = 1024 * 1024
PINS = load_pins()
DEMO_GOLDENS = Path(__file__).resolve().parents[2] / "model_repository" / "pipeline" / "goldens" / "digits.golden.json"


# --- liveness, headroom (the leak trend: test_leak.py) ---------------------------------------------------


def test_liveness_all_ready():
    result = check_liveness({"pipeline": True, "classifier": True})
    assert result.ok and result.name == "liveness"
    assert result.reason == "2 models ready"


def test_liveness_names_the_models_not_ready():
    result = check_liveness({"pipeline": True, "postprocess": False, "classifier": False})
    assert not result.ok
    assert result.reason == "not ready: classifier, postprocess"
    assert result.value == {"pipeline": True, "postprocess": False, "classifier": False}


def test_liveness_says_why_a_model_is_not_ready():
    result = check_liveness({"a": True, "b": False}, {"b": "UNAVAILABLE: failed to load"})
    assert result.reason == "not ready: b (UNAVAILABLE: failed to load)"


def test_headroom_boundary_is_exactly_the_floor():
    floor = 100 * MIB
    at_floor = check_headroom(MemoryReading("host", 1000 * MIB, floor), floor)
    assert at_floor.ok
    assert at_floor.reason == "host memory free 100 MiB (>= floor 100 MiB of 1000 MiB)"
    below = check_headroom(MemoryReading("host", 1000 * MIB, floor - 1), floor)
    assert not below.ok
    assert "<" in below.reason and ">=" not in below.reason
    assert below.value == {"source": "host", "free_bytes": floor - 1, "total_bytes": 1000 * MIB}
    assert below.limit == {"floor_bytes": floor}


def test_headroom_without_a_reading_fails_with_the_error():
    result = check_headroom(None, 0, "GPU memory unknown: server metrics unavailable")
    assert not result.ok and result.reason == "GPU memory unknown: server metrics unavailable"
    assert check_headroom(None, 0).reason == "memory could not be read"


# --- stall --------------------------------------------------------------------------


def test_stalled_after_stall_s_without_progress():
    detector = StallDetector()
    detector.update(100.0, {"classifier": 3}, {"classifier": 42})
    detector.update(104.0, {"classifier": 3}, {"classifier": 42})
    assert detector.stalled(109.5, 10.0, {"classifier": 3}) == {}  # just below stall_s
    assert detector.stalled(110.0, 10.0, {"classifier": 3}) == {"classifier": 10.0}
    assert detector.stalled(117.0, 10.0, {"classifier": 3}) == {"classifier": 17.0}


def test_progress_resets_the_stall_clock():
    detector = StallDetector()
    detector.update(0.0, {"m": 1}, {"m": 5})
    detector.update(6.0, {"m": 1}, {"m": 6})  # one inference completed
    assert detector.stalled(15.0, 10.0, {"m": 1}) == {}
    assert detector.stalled(16.0, 10.0, {"m": 1}) == {"m": 10.0}


def test_nothing_pending_resets_the_stall_clock():
    detector = StallDetector()
    detector.update(0.0, {"m": 2}, {"m": 5})
    detector.update(5.0, {"m": 0}, {"m": 5})  # idle, not stuck
    detector.update(7.0, {"m": 2}, {"m": 5})
    assert detector.stalled(14.0, 10.0, {"m": 2}) == {}
    assert detector.stalled(15.0, 10.0, {"m": 2}) == {"m": 10.0}


def test_not_stalled_when_nothing_is_pending_now():
    detector = StallDetector()
    detector.update(0.0, {"m": 2}, {"m": 5})
    assert detector.stalled(60.0, 10.0, {"m": 0}) == {}
    assert detector.stalled(60.0, 10.0, {}) == {}


def test_stall_is_per_model():
    detector = StallDetector()
    detector.update(0.0, {"a": 1, "b": 1}, {"a": 1, "b": 1})
    detector.update(8.0, {"a": 1, "b": 1}, {"a": 1, "b": 2})
    assert detector.stalled(12.0, 10.0, {"a": 1, "b": 1}) == {"a": 12.0}


def test_check_stall_verdicts():
    assert check_stall({}, 10.0) == CheckResult("stall", True, {}, {"stall_s": 10.0}, "no model stalled")
    stalled = check_stall({"classifier": 12.0}, 10.0)
    assert not stalled.ok and stalled.value == {"classifier": 12.0}
    assert stalled.reason == "requests pending, nothing completed: classifier (12 s)"
    unknown = check_stall(None, 10.0, "metrics unavailable: refused")
    assert not unknown.ok and unknown.reason == "metrics unavailable: refused"


# --- breakers -----------------------------------------------------------------------


def snapshot(name: str, state: State, since: float = 0.0, **overrides) -> BreakerSnapshot:
    fields = dict(
        name=name, state=state, since=since, opened_at=0.0, consecutive_failures=0, calls_in_window=0,
        failure_rate=0.0, slow_call_rate=0.0, trials_in_flight=0, generation=1, transitions=0,
    )
    fields.update(overrides)
    return BreakerSnapshot(**fields)


def test_open_breaker_is_not_ready_and_named():
    snaps = [snapshot("preprocess", State.CLOSED), snapshot("classifier", State.OPEN, since=90.0, consecutive_failures=5)]
    result = check_breakers(snaps, half_open_not_ready=False, now=102.5)
    assert not result.ok
    assert result.reason == "breaker 'classifier' OPEN"
    assert result.value["classifier"]["state"] == "OPEN"
    assert result.value["classifier"]["seconds_in_state"] == 12.5
    assert result.value["classifier"]["consecutive_failures"] == 5
    assert result.value["preprocess"]["state"] == "CLOSED"


def test_half_open_is_ready_unless_configured_otherwise():
    snaps = [snapshot("classifier", State.HALF_OPEN)]
    lenient = check_breakers(snaps, half_open_not_ready=False, now=1.0)
    assert lenient.ok and lenient.reason == "1 breaker(s) closed or probing"
    strict = check_breakers(snaps, half_open_not_ready=True, now=1.0)
    assert not strict.ok and strict.reason == "breaker 'classifier' HALF_OPEN"
    assert strict.limit == "none OPEN or HALF_OPEN"



def test_a_breaker_left_by_a_guard_no_longer_loaded_is_shown_but_never_fails():
    snaps = [snapshot("gone", State.OPEN), snapshot("classifier", State.OPEN)]
    both = check_breakers(snaps, half_open_not_ready=False, now=1.0, orphaned=frozenset({"gone"}))
    assert not both.ok and both.reason.startswith("breaker 'classifier' OPEN;")  # a live guard's still fails
    alone = check_breakers(snaps[:1], half_open_not_ready=False, now=1.0, orphaned=frozenset({"gone"}))
    assert alone.ok
    assert alone.reason == "no breaker in use yet; 'gone' OPEN left by a guard no longer loaded: ignored"
    assert alone.value["gone"]["state"] == "OPEN" and alone.value["gone"]["guard_loaded"] is False

def test_no_breakers_is_ready():
    result = check_breakers([], half_open_not_ready=True, now=0.0)
    assert result.ok and result.reason == "no breaker in use yet" and result.value == {}


def test_seconds_in_state_never_negative():
    result = check_breakers([snapshot("c", State.CLOSED, since=50.0)], False, now=40.0)
    assert result.value["c"]["seconds_in_state"] == 0.0


# --- pins ---------------------------------------------------------------------------


def test_expected_runtime_cpu_is_the_ci_torch_and_the_server():
    expected = expected_runtime(PINS, "cpu")
    assert expected == {"torch": f"{PINS.ci_torch.version}+cpu", "tritonserver": PINS.container.triton_server}
    # The demo's CPU goldens were recorded on this server version.
    assert GoldenCase.load(DEMO_GOLDENS).expected["cpu"].environment["tritonserver"] == expected["tritonserver"]


def test_expected_runtime_gpu_is_the_image():
    assert expected_runtime(PINS, "gpu") == {
        "torch": f"{PINS.image_torch.version}+{PINS.image_torch.cuda_build}",
        "cuda": PINS.image_torch.cuda,
        "cudnn": PINS.image_torch.cudnn,
        "tritonserver": PINS.container.triton_server,
    }


def test_pins_match():
    expected = {"torch": "2.13.0+cpu", "tritonserver": "2.51.0"}
    result = check_pins(expected, dict(expected), strict=True)
    assert result.ok and result.reason == "runtime matches the pins"


def test_pins_mismatch_is_reported_only_unless_strict():
    expected = {"torch": "2.13.0+cpu", "tritonserver": "2.51.0"}
    observed = {"torch": "2.12.0+cpu", "tritonserver": "2.51.0"}
    lenient = check_pins(expected, observed, strict=False)
    assert lenient.ok
    assert lenient.reason == "mismatch: torch 2.12.0+cpu (pinned 2.13.0+cpu) [reported only: strict_pins is off]"
    strict = check_pins(expected, observed, strict=True)
    assert not strict.ok
    assert strict.reason == "mismatch: torch 2.12.0+cpu (pinned 2.13.0+cpu)"


def test_pins_missing_observation_is_a_mismatch():
    result = check_pins({"tritonserver": "2.51.0"}, {}, strict=True)
    assert not result.ok and "tritonserver None (pinned 2.51.0)" in result.reason
