"""An operator's override of a breaker: the state machine, the command, the key, the control model's wiring.

The whole way through a real server (the CLI, the control model, status,
/metrics, the canary): tests/integration/test_in_process.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import fakes
from triton_guard import defaults
from triton_guard.canary.checks import check_breakers
from triton_guard.guard import override
from triton_guard.guard.breaker import CircuitBreaker
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.policy import GuardPolicy
from triton_guard.guard.record import Override, Permit, Rejection, State
from triton_guard.guard.shared_state import SharedFileStore
from triton_guard.guard.store import MemoryStore
from triton_guard.model_config import read_config
from triton_guard.server import CONTROL_REPOSITORY, LocalServer
from triton_guard.server.auth import api_key_matches

KEY = "an-operators-key-0123456789"


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    return MemoryStore() if request.param == "memory" else SharedFileStore(tmp_path / "state")


@pytest.fixture
def clock():
    return fakes.FakeClock(1000.0)


def breaker(store, clock, **overrides) -> CircuitBreaker:
    return CircuitBreaker("m", GuardConfig(**{"failure_threshold": 2, "recovery_ms": 1000, **overrides}), store, clock)


def fail(b: CircuitBreaker):
    return b.record(b.acquire(), success=False, duration_s=0.001)


# --- the state machine ---------------------------------------------------------------------


def test_forced_open_refuses_everything_whatever_the_clock_and_the_probes(store, clock):
    b = breaker(store, clock)
    in_flight = b.acquire()
    transition = b.force(Override.FORCED_OPEN)
    assert (transition.to_state, transition.reason) == (State.OPEN, "forced_open")
    clock.advance(3600)  # recovery_ms passed long ago: no trial
    refused = b.acquire()
    assert isinstance(refused, Rejection) and refused.reason == "forced_open"
    assert b.probe_succeeded(b.snapshot().generation) is None  # a good probe does not end it either
    assert b.record(in_flight, success=True, duration_s=0.001) is None  # began before the override: stale
    snap = b.snapshot()
    assert (snap.state, snap.override) == (State.OPEN, Override.FORCED_OPEN)


def test_auto_after_forced_open_lets_one_trial_decide(store, clock):
    b = breaker(store, clock)
    b.force(Override.FORCED_OPEN)
    assert b.force(Override.AUTO).to_state == State.HALF_OPEN
    trial = b.acquire()
    assert isinstance(trial, Permit) and trial.trial
    assert isinstance(b.acquire(), Rejection)  # one trial at a time
    assert b.record(trial, success=True, duration_s=0.001).to_state == State.CLOSED


def test_forced_closed_admits_everything_and_counts_nothing(store, clock):
    b = breaker(store, clock)
    fail(b)
    assert b.force(Override.FORCED_CLOSED).to_state == State.CLOSED
    for _ in range(10):  # far past failure_threshold=2
        assert fail(b) is None
    snap = b.snapshot()
    assert (snap.state, snap.override, snap.consecutive_failures, snap.calls_in_window) == (
        State.CLOSED, Override.FORCED_CLOSED, 0, 0)  # fmt: skip
    assert b.record_expired(5) is None and b.snapshot().consecutive_failures == 0


def test_auto_after_forced_closed_counts_again_from_a_fresh_window(store, clock):
    b = breaker(store, clock)
    b.force(Override.FORCED_CLOSED)
    fail(b)
    assert b.force(Override.AUTO).reason == "override_cleared"
    assert fail(b) is None
    assert fail(b).to_state == State.OPEN  # two failures in a row, both counted after auto


def test_forced_open_from_open_still_refuses_after_recovery_and_auto_is_a_no_op_twice(store, clock):
    b = breaker(store, clock)
    fail(b), fail(b)
    b.force(Override.FORCED_OPEN)
    clock.advance(5)
    assert b.acquire().reason == "forced_open"
    b.force(Override.AUTO)
    assert b.force(Override.AUTO) is None


def test_a_forced_open_breaker_answers_the_operators_message(clock):
    b = breaker(MemoryStore(), clock)
    b.force(Override.FORCED_OPEN)
    refused = GuardPolicy("classifier", b.config, b).admit(8)
    assert refused.message == "Service temporarily unavailable: circuit breaker for model 'classifier' was opened by an operator"
    assert refused.rejected == "forced_open"


# --- the command and the key -------------------------------------------------------------------


def test_a_command_round_trips_and_bad_ones_say_why():
    command = override.OverrideCommand("classifier", "open", KEY)
    assert override.OverrideCommand.from_json(command.to_json()) == command
    assert KEY not in repr(command)  # the key stays out of logs
    for raw, why in [
        ("not json", "not JSON"),
        ('{"model": "m", "mode": "sideways", "key": "k"}', "mode 'sideways' is not one of open, close, auto"),
        ('{"model": "", "mode": "open"}', "names the model"),
        ('{"model": "m", "mode": "open", "colour": "red"}', "a JSON object"),
        ('{"mode": "open"}', "lacks a field"),
    ]:
        with pytest.raises(override.OverrideError, match=why):
            override.OverrideCommand.from_json(raw)


def test_apply_names_the_breakers_a_server_has_and_keeps_the_claimed_settings(tmp_path):
    store = SharedFileStore(tmp_path)
    CircuitBreaker("classifier", GuardConfig(window_size=5, minimum_calls=5), store).acquire()
    with pytest.raises(override.OverrideError, match=r"no breaker for model 'nope' \(breakers: 'classifier'\)"):
        override.apply(override.OverrideCommand("nope", "open"), store, store.list_breakers(), None)
    claim = {"models": ["classifier"], "settings": {"window_size": 5, "minimum_calls": 5}}
    result = override.apply(override.OverrideCommand("classifier", "open"), store, store.list_breakers(), claim)
    assert result == {"model": "classifier", "override": "FORCED_OPEN", "state": "OPEN", "previous_override": "AUTO",
                      "previous_state": "CLOSED", "transition": "forced_open"}  # fmt: skip
    assert store.read("classifier").window_size == 5  # the breaker's own window, not a default one
    assert override.describe(result) == (
        "breaker for model 'classifier': OPEN, forced OPEN by an operator (was CLOSED, automatic)")


def test_the_key_is_the_servers_and_no_key_allows_nothing(tmp_path):
    assert api_key_matches(KEY, {defaults.API_KEY_ENV: KEY})
    assert not api_key_matches(KEY + "x", {defaults.API_KEY_ENV: KEY})
    assert not api_key_matches("", {})
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert api_key_matches(KEY, {defaults.API_KEY_FILE_ENV: str(key_file)})
    assert not api_key_matches(KEY, {defaults.API_KEY_FILE_ENV: str(tmp_path / "missing")})


# --- where it shows, and how it is served --------------------------------------------------------


def test_the_canarys_breaker_check_names_the_operator():
    b = CircuitBreaker("classifier", GuardConfig(), store := MemoryStore(), fakes.FakeClock(10.0))
    b.force(Override.FORCED_OPEN)
    result = check_breakers([b.snapshot()], half_open_not_ready=False, now=12.0)
    assert not result.ok and result.reason == "breaker 'classifier' OPEN (opened by an operator)"
    assert result.value["classifier"]["override"] == "FORCED_OPEN"
    assert store.read("classifier").override == int(Override.FORCED_OPEN)


def test_serve_adds_the_control_model_unless_the_repository_has_its_own(tmp_path):
    def repositories():
        return [a for a in LocalServer(model_repository=tmp_path).command(tmp_path) if a.startswith("--model-repository=")]

    assert f"--model-repository={CONTROL_REPOSITORY}" in repositories()
    (tmp_path / defaults.CONTROL_MODEL).mkdir()
    (tmp_path / defaults.CONTROL_MODEL / "config.pbtxt").write_text(f'name: "{defaults.CONTROL_MODEL}"\n')
    assert f"--model-repository={CONTROL_REPOSITORY}" not in repositories()
    config = read_config(CONTROL_REPOSITORY / defaults.CONTROL_MODEL / "config.pbtxt")
    assert (config.name, config.backend, config.parameters["role"].string_value) == (
        defaults.CONTROL_MODEL, "guard", "control")  # fmt: skip
    assert (CONTROL_REPOSITORY / defaults.CONTROL_MODEL / "1").is_dir()


def test_the_command_refuses_without_a_key_and_says_unreachable_without_a_server():
    cli = [sys.executable, "-m", "triton_guard.cli", "breaker", "classifier", "open", "--url", "127.0.0.1:9", "--timeout", "2"]
    src = str(Path(__file__).resolve().parents[2] / "src")
    bare = {"PATH": "/usr/bin:/bin", "PYTHONPATH": src, "HOME": "/nonexistent", "XDG_RUNTIME_DIR": "/nonexistent"}
    no_key = subprocess.run(cli, capture_output=True, text=True, env=bare, timeout=60)
    assert no_key.returncode == 1 and f"set {defaults.API_KEY_ENV}" in no_key.stderr
    nobody = subprocess.run(cli, capture_output=True, text=True, env={**bare, defaults.API_KEY_ENV: KEY}, timeout=60)
    assert nobody.returncode == 2 and "unreachable: 127.0.0.1:9" in nobody.stderr


def test_status_shows_an_override_from_the_canary_or_from_metrics_alone():
    from triton_guard import metrics as catalogue
    from triton_guard import promtext, status

    gauges = (f"# TYPE {catalogue.BREAKER_STATE.name} gauge\n{catalogue.BREAKER_STATE.name}{{model=\"classifier\"}} 1\n"
              f"# TYPE {catalogue.BREAKER_OVERRIDE.name} gauge\n{catalogue.BREAKER_OVERRIDE.name}{{model=\"classifier\"}} 1\n")
    guards = status.guard_counters(promtext.parse(gauges))
    assert guards["classifier"]["override"] == "FORCED_OPEN"
    screen = status.render({"url": "h:8001", "at": 0.0, "health": "not_ready", "reasons": [], "report": None,
                            "guards": guards, "metrics_error": None})  # fmt: skip
    assert "FORCED_OPEN by an operator, until `triton-guard breaker classifier auto`" in screen
