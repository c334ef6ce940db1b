"""Fault injection logic (triton_guard.chaos.faults) and its wiring into the CLI and launcher, without a server."""

from __future__ import annotations

import fnmatch
import json
import math
import threading
import tomllib
import weakref
from pathlib import Path

import numpy as np
import pytest

from triton_guard import cli, defaults
from triton_guard.chaos.faults import (
    MB,
    ChaosCommand,
    ChaosControl,
    ChaosHook,
    Fault,
    FaultError,
    FaultKind,
    Leak,
    allocate_host,
    hook_from_environment,
    perturbed_weights,
)
from triton_guard.server import CHAOS_REPOSITORY, PACKAGE_DIR, LocalServer, set_chaos_mode

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- Fault -----------------------------------------------------------------


def test_fault_defaults_come_from_defaults_and_kind_becomes_an_enum():
    fault = Fault("slow")
    assert fault.kind is FaultKind.SLOW
    assert fault.slow_ms == defaults.CHAOS_SLOW_MS
    assert fault.leak_mb_per_s == defaults.CHAOS_LEAK_MB_PER_S
    assert fault.leak_cap_mb == defaults.CHAOS_LEAK_CAP_MB
    assert fault.drift_scale == defaults.CHAOS_DRIFT_SCALE
    assert fault.seed == defaults.CHAOS_DRIFT_SEED


def test_unknown_fault_names_the_known_ones():
    with pytest.raises(FaultError, match=r"unknown fault 'melt': expected one of hang, error, slow, nan, drift, leak"):
        Fault("melt")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"slow_ms": 0}, "slow_ms must be > 0, got 0"),
        ({"slow_ms": -5}, "slow_ms must be > 0"),
        ({"slow_ms": 1.5}, "slow_ms must be an integer, got 1.5"),
        ({"slow_ms": True}, "slow_ms must be an integer, got True"),
        ({"slow_ms": "500"}, "slow_ms must be an integer, got '500'"),
        ({"leak_mb_per_s": 0.0}, "leak_mb_per_s must be > 0"),
        ({"leak_mb_per_s": math.inf}, "leak_mb_per_s must be > 0, got inf"),
        ({"leak_cap_mb": math.nan}, "leak_cap_mb must be > 0, got nan"),
        ({"drift_scale": -0.1}, "drift_scale must be > 0"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"set_at": -1.0}, "set_at must be >= 0"),
    ],
)
def test_bad_parameters_are_refused_with_the_parameter_named(params, message):
    with pytest.raises(FaultError, match=message):
        Fault("slow", **params)


def test_fault_round_trips_through_a_dict_and_json():
    fault = Fault(FaultKind.LEAK, leak_mb_per_s=2.5, leak_cap_mb=64, set_at=1234.5)
    data = json.loads(json.dumps(fault.to_dict()))
    assert data["kind"] == "leak"
    assert Fault.from_dict(data) == fault


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "a fault is a JSON object, got list"),
        ({"slow_ms": 5}, "a fault needs a 'kind'"),
        ({"kind": "slow", "slowms": 5, "x": 1}, "unknown fault parameter\\(s\\): slowms, x"),
    ],
)
def test_fault_from_dict_refuses_malformed_data(data, message):
    with pytest.raises(FaultError, match=message):
        Fault.from_dict(data)


@pytest.mark.parametrize(
    "fault, words",
    [
        (Fault("slow", slow_ms=250), "+250 ms"),
        (Fault("leak", leak_mb_per_s=3, leak_cap_mb=40), "+3 MB/s held, up to 40 MB"),
        (Fault("drift", drift_scale=0.2, seed=7), "scale 0.2, seed 7"),
        (Fault("hang"), "until cleared"),
    ],
)
def test_describe_says_the_kind_and_its_parameters(fault, words):
    line = fault.describe()
    assert line.startswith(fault.kind.value) and words in line


# --- ChaosCommand ----------------------------------------------------------


def test_build_keeps_only_the_parameters_the_fault_uses():
    command = ChaosCommand.build("slow", "classifier", slow_ms=80, leak_cap_mb=-1, drift_scale=0)
    assert command.fault == Fault("slow", slow_ms=80)  # bad values for other kinds do not matter
    assert json.loads(command.to_json()) == {"model": "classifier", "fault": "slow", "slow_ms": 80}


def test_command_round_trips_and_the_receiver_stamps_set_at():
    sent = ChaosCommand.build("leak", "classifier", leak_mb_per_s=4.0, leak_cap_mb=16.0)
    received = ChaosCommand.from_json(sent.to_json().encode(), set_at=99.0)
    assert received.model == "classifier"
    assert received.fault == Fault("leak", leak_mb_per_s=4.0, leak_cap_mb=16.0, set_at=99.0)


def test_clear_is_a_command_without_a_fault():
    command = ChaosCommand.build("clear", "classifier", slow_ms=5)
    assert command.fault is None
    assert ChaosCommand.from_json(command.to_json()).fault is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "the command is not JSON"),
        ('{"fault": "hang"}', '"fault": ..., "model": ...'),
        ('{"fault": "melt", "model": "m"}', "unknown fault 'melt'.*or clear"),
        ('{"fault": "slow", "model": "m", "leak_cap_mb": 5}', r"fault slow takes no parameter\(s\) leak_cap_mb \(it takes: slow_ms\)"),
        ('{"fault": "hang", "model": "m", "set_at": 5}', r"takes no parameter\(s\) set_at \(it takes: none\)"),
        ('{"fault": "clear", "model": "m", "slow_ms": 5}', "clear takes no parameters, got slow_ms"),
        ('{"fault": "slow", "model": "m", "slow_ms": 0}', "slow_ms must be > 0"),
        ('{"fault": "hang", "model": ""}', "non-empty string"),
        ('{"fault": "hang", "model": 3}', "non-empty string, got 3"),
        ('{"fault": "hang", "model": "../etc"}', "invalid model name"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(text, message):
    with pytest.raises(FaultError, match=message):
        ChaosCommand.from_json(text)


# --- ChaosControl ----------------------------------------------------------


def test_control_write_read_clear(tmp_path):
    control = ChaosControl(tmp_path / "chaos")
    assert control.read("classifier") is None
    fault = Fault("error", set_at=1.0)
    control.write("classifier", fault)
    assert control.read("classifier") == fault
    assert control.read("other") is None  # per model
    assert control.clear("classifier") == fault
    assert control.read("classifier") is None
    assert control.clear("classifier") is None


def test_control_parses_only_when_the_file_changed(tmp_path):
    control = ChaosControl(tmp_path)
    control.write("m", Fault("nan"))
    first = control.read("m")
    assert control.read("m") is first  # same bytes: the parsed fault is reused
    control.write("m", Fault("nan", set_at=2.0))
    assert control.read("m") is not first and control.read("m").set_at == 2.0


def test_a_reader_never_sees_half_a_write(tmp_path):
    writer, reader = ChaosControl(tmp_path), ChaosControl(tmp_path)
    faults = [Fault("slow", slow_ms=1, set_at=1.0), Fault("leak", leak_mb_per_s=123456.75, set_at=2.0)]
    done = threading.Event()

    def write_many():
        for i in range(1000):
            writer.write("m", faults[i % 2])
        done.set()

    thread = threading.Thread(target=write_many)
    thread.start()
    seen = []
    while not done.is_set():
        seen.append(reader.read("m"))  # raises FaultError on a torn file
    thread.join()
    assert set(seen) <= {None, *faults}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no tmp file left behind


def test_an_unreadable_control_file_is_reported_with_the_model(tmp_path):
    (tmp_path / "m.json").write_text("{garbage")
    with pytest.raises(FaultError, match="chaos control file for model 'm' is invalid"):
        ChaosControl(tmp_path).read("m")
    assert ChaosControl(tmp_path).clear("m") is None
    assert not (tmp_path / "m.json").exists()


def test_hooked_models_lists_registered_ones(tmp_path):
    control = ChaosControl(tmp_path / "absent")
    assert control.hooked_models() == []
    control.register("classifier")
    control.register("b")
    control.write("other", Fault("nan"))
    assert control.hooked_models() == ["b", "classifier"]


# --- ChaosHook: before / after ---------------------------------------------


class FakeTime:
    """A clock that only moves when the code under test sleeps (or a test advances it)."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []
        self.on_sleep = None  # called after each sleep: how a test changes the fault "meanwhile"

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(len(self.sleeps))


@pytest.fixture
def fake_time():
    return FakeTime()


@pytest.fixture
def control(tmp_path):
    return ChaosControl(tmp_path)


def make_hook(control, fake_time, **kwargs):
    return ChaosHook(control, "classifier", clock=fake_time.clock, sleep=fake_time.sleep, **kwargs)


def test_no_fault_before_returns_none_and_outputs_pass_through(control, fake_time):
    hook = make_hook(control, fake_time)
    outputs = np.ones((2, 10), np.float32)
    fault = hook.before()
    assert fault is None and fake_time.sleeps == []
    assert hook.after_outputs(fault, outputs) is outputs


def test_slow_sleeps_slow_ms_once_per_execute(control, fake_time):
    control.write("classifier", Fault("slow", slow_ms=250))
    hook = make_hook(control, fake_time)
    assert hook.before().kind is FaultKind.SLOW
    assert fake_time.sleeps == [0.25]


def test_error_is_returned_for_the_model_to_answer_with(control, fake_time):
    control.write("classifier", Fault("error"))
    hook = make_hook(control, fake_time)
    assert hook.before().kind is FaultKind.ERROR
    assert hook.error_message == "chaos: injected error in model 'classifier'"
    assert fake_time.sleeps == []


def test_nan_fills_float_outputs_without_touching_the_input(control, fake_time):
    control.write("classifier", Fault("nan"))
    hook = make_hook(control, fake_time)
    fault = hook.before()
    probs = np.full((3, 10), 0.1, np.float32)
    result = hook.after_outputs(fault, probs)
    assert result.shape == probs.shape and result.dtype == np.float32 and np.isnan(result).all()
    assert not np.isnan(probs).any()
    labels = np.arange(3)
    assert hook.after_outputs(fault, labels) is labels  # integers have no NaN


def test_drift_reports_its_scale_and_seed(control, fake_time):
    control.write("classifier", Fault("drift", drift_scale=0.3, seed=4))
    fault = make_hook(control, fake_time).before()
    assert (fault.kind, fault.drift_scale, fault.seed) == (FaultKind.DRIFT, 0.3, 4)


def test_hang_polls_until_cleared(control, fake_time):
    control.write("classifier", Fault("hang"))
    fake_time.on_sleep = lambda n: control.clear("classifier") if n == 3 else None
    hook = make_hook(control, fake_time, hang_poll_s=0.02)
    assert hook.before() is None
    assert fake_time.sleeps == [0.02, 0.02, 0.02]


def test_hang_replaced_by_slow_goes_on_to_be_slow(control, fake_time):
    control.write("classifier", Fault("hang"))
    fake_time.on_sleep = lambda n: control.write("classifier", Fault("slow", slow_ms=100)) if n == 2 else None
    fault = make_hook(control, fake_time, hang_poll_s=0.02).before()
    assert fault.kind is FaultKind.SLOW
    assert fake_time.sleeps == [0.02, 0.02, 0.1]


def test_clear_releases_a_hung_execute_in_another_thread(control):
    control.write("classifier", Fault("hang"))
    polling = threading.Event()

    def sleep(seconds):
        polling.set()
        threading.Event().wait(seconds)

    hook = ChaosHook(control, "classifier", sleep=sleep, hang_poll_s=0.005)
    returned = []
    execute = threading.Thread(target=lambda: returned.append(hook.before()))
    execute.start()
    assert polling.wait(timeout=2), "before() never started polling"
    assert execute.is_alive() and returned == []  # hung
    control.clear("classifier")
    execute.join(timeout=2)
    assert not execute.is_alive(), "clear did not release the hung execute"
    assert returned == [None]


# --- Leak ------------------------------------------------------------------


class Chunk:
    """Stands for allocated memory; weak references tell whether it was let go."""

    def __init__(self, nbytes):
        self.nbytes = nbytes


class FakeAllocator:
    def __init__(self):
        self.chunks = []

    def __call__(self, nbytes):
        chunk = Chunk(nbytes)
        self.chunks.append(weakref.ref(chunk))
        return chunk

    @property
    def sizes(self):
        return [ref().nbytes for ref in self.chunks if ref() is not None]

    @property
    def live(self):
        return sum(ref() is not None for ref in self.chunks)


def test_leak_grows_at_the_rate_up_to_the_cap():
    allocate = FakeAllocator()
    leak = Leak(Fault("leak", leak_mb_per_s=10, leak_cap_mb=25), allocate, started_at=100.0)
    assert leak.grow(100.0) == 0 and allocate.sizes == []
    assert leak.grow(100.1) == 1 * MB
    assert leak.grow(101.0) == 10 * MB
    assert sum(allocate.sizes) == 10 * MB and allocate.sizes == [1 * MB, 9 * MB]
    assert leak.grow(103.0) == 25 * MB  # capped
    assert leak.grow(200.0) == 25 * MB and len(allocate.sizes) == 3
    leak.release()
    assert leak.held_bytes == 0 and allocate.live == 0


def test_leak_defers_chunks_too_small_to_map():
    allocate = FakeAllocator()
    leak = Leak(Fault("leak", leak_mb_per_s=1, leak_cap_mb=1), allocate, started_at=0.0)
    assert leak.grow(0.01) == 0 and allocate.sizes == []  # 10 KB due: wait
    assert leak.grow(0.1) == round(0.1 * MB)


def test_hook_sync_starts_grows_and_releases_the_leak(control, fake_time):
    allocate = FakeAllocator()
    released = []
    hook = make_hook(control, fake_time, allocate=allocate, release=lambda: released.append(True))
    hook.sync()
    assert hook.leaked_bytes == 0 and allocate.chunks == []
    control.write("classifier", Fault("leak", leak_mb_per_s=8, leak_cap_mb=20, set_at=1.0))
    hook.sync()  # starts the leak now
    fake_time.now += 0.5
    hook.sync()
    assert hook.leaked_bytes == 4 * MB
    fake_time.now += 10
    hook.sync()
    assert hook.leaked_bytes == 20 * MB and allocate.live == 2
    control.clear("classifier")
    hook.sync()
    assert hook.leaked_bytes == 0 and allocate.live == 0 and released == [True]


def test_a_reinjected_leak_starts_again_from_zero(control, fake_time):
    allocate = FakeAllocator()
    hook = make_hook(control, fake_time, allocate=allocate)
    control.write("classifier", Fault("leak", leak_mb_per_s=8, leak_cap_mb=20, set_at=1.0))
    hook.sync()
    fake_time.now += 1
    hook.sync()
    assert hook.leaked_bytes == 8 * MB
    control.write("classifier", Fault("leak", leak_mb_per_s=8, leak_cap_mb=20, set_at=2.0))
    hook.sync()
    assert hook.leaked_bytes == 0 and allocate.live == 0
    fake_time.now += 0.25
    hook.sync()
    assert hook.leaked_bytes == 2 * MB


def test_watcher_thread_leaks_without_requests_and_close_releases(control):
    allocate = FakeAllocator()
    control.write("classifier", Fault("leak", leak_mb_per_s=1000, leak_cap_mb=1))
    hook = ChaosHook(control, "classifier", allocate=allocate, watch_s=0.005).start()
    try:
        grown = threading.Event()
        for _ in range(400):  # bounded: 2 s
            if hook.leaked_bytes == 1 * MB:
                grown.set()
                break
            grown.wait(0.005)
        assert grown.is_set(), f"leak did not reach its cap: {hook.leaked_bytes} bytes"
    finally:
        hook.close()
    assert hook.leaked_bytes == 0 and allocate.live == 0


def test_watcher_survives_a_failed_allocation_and_says_so_once(control, capsys):
    failures = []

    def allocate(nbytes):
        if len(failures) < 3:
            failures.append(nbytes)
            raise MemoryError("no room")
        return Chunk(nbytes)

    control.write("classifier", Fault("leak", leak_mb_per_s=1000, leak_cap_mb=1))
    hook = ChaosHook(control, "classifier", allocate=allocate, watch_s=0.005).start()
    try:
        waited = threading.Event()
        for _ in range(400):
            if hook.leaked_bytes:
                break
            waited.wait(0.005)
        assert hook.leaked_bytes == 1 * MB
    finally:
        hook.close()
    err = capsys.readouterr().err
    assert err.count("chaos: model 'classifier': MemoryError: no room") == 1


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_host_allocation_is_resident_and_freed_when_dropped():
    before = _rss_mb()
    chunk = allocate_host(32 * MB)
    assert chunk.dtype == np.uint8 and chunk.size == 32 * MB and chunk[::4096].min() == 1
    assert _rss_mb() - before > 30  # touched: really resident
    del chunk
    assert _rss_mb() - before < 2  # its own mapping: unmapped at once


# --- drift -----------------------------------------------------------------


def test_perturbed_weights_are_seeded_and_scaled_per_tensor():
    rng = np.random.default_rng(1)
    weights = {"w": rng.normal(0, 2.0, (200, 300)).astype(np.float32), "b": rng.normal(0, 0.01, 500).astype(np.float32)}
    original = {k: v.copy() for k, v in weights.items()}
    first = perturbed_weights(weights, 0.5, seed=3)
    assert all(np.array_equal(weights[k], original[k]) for k in weights)  # input untouched
    again = perturbed_weights(dict(reversed(list(weights.items()))), 0.5, seed=3)
    assert all(np.array_equal(first[k], again[k]) for k in weights)  # same seed, same result, any order
    other = perturbed_weights(weights, 0.5, seed=4)
    assert not np.array_equal(first["w"], other["w"])
    for name, values in weights.items():
        noise = first[name] - values
        assert first[name].dtype == np.float32
        assert noise.std() == pytest.approx(0.5 * values.std(), rel=0.1)


# --- hook_from_environment -------------------------------------------------


def test_no_hook_without_the_environment_variable(tmp_path):
    assert hook_from_environment("classifier", environ={}) is None
    assert hook_from_environment("classifier", environ={defaults.CHAOS_DIR_ENV: ""}) is None


def test_hook_from_environment_registers_and_starts(tmp_path):
    allocate = FakeAllocator()
    hook = hook_from_environment("classifier", allocate=allocate, environ={defaults.CHAOS_DIR_ENV: str(tmp_path)})
    try:
        assert isinstance(hook, ChaosHook) and hook.allocate is allocate
        assert hook.control.hooked_models() == ["classifier"]
        assert hook._watcher is not None and hook._watcher.is_alive()
    finally:
        hook.close()
    assert not hook._watcher.is_alive()


# --- launcher and CLI wiring -----------------------------------------------


def test_set_chaos_mode_arms_or_disarms_the_hooks(tmp_path):
    env = {defaults.CHAOS_DIR_ENV: "/left/over", "OTHER": "1"}
    assert set_chaos_mode(dict(env), None) == {"OTHER": "1"}
    armed = set_chaos_mode(dict(env), tmp_path / "chaos")
    assert armed[defaults.CHAOS_DIR_ENV] == str(tmp_path / "chaos") and (tmp_path / "chaos").is_dir()


def test_only_a_chaos_server_serves_the_chaos_repository(tmp_path):
    (tmp_path / defaults.CANARY_MODEL).mkdir()  # a canary of its own: no default canary repository either
    (tmp_path / defaults.CANARY_MODEL / "config.pbtxt").write_text("")
    plain = LocalServer(model_repository=tmp_path).command(tmp_path / "backends")
    chaotic = LocalServer(model_repository=tmp_path, chaos=True).command(tmp_path / "backends")
    repositories = lambda cmd: [a for a in cmd if a.startswith("--model-repository=")]  # noqa: E731
    assert repositories(plain) == [f"--model-repository={tmp_path.resolve()}"]
    assert repositories(chaotic) == [*repositories(plain), f"--model-repository={CHAOS_REPOSITORY}"]
    config = (CHAOS_REPOSITORY / defaults.CHAOS_MODEL / "config.pbtxt").read_text()
    assert f'name: "{defaults.CHAOS_MODEL}"' in config
    assert LocalServer(model_repository=tmp_path).chaos_dir is None


def test_the_chaos_repository_is_package_data():
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = PACKAGE_DIR
    files = [p.relative_to(package).as_posix() for p in CHAOS_REPOSITORY.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns["triton_guard"]), name


@pytest.mark.parametrize("argv, chaos", [(["serve"], False), (["serve", "--chaos"], True)])
def test_serve_passes_chaos_to_the_server(monkeypatch, argv, chaos):
    started = []
    monkeypatch.setattr("triton_guard.server.serve_forever", lambda server: started.append(server) or 0)
    assert cli.main(argv) == 0
    assert started[0].chaos is chaos


def test_chaos_command_defaults():
    args = cli.build_parser().parse_args(["chaos", "leak"])
    assert (args.model, args.url) == (defaults.CHAOS_TARGET_MODEL, defaults.DEFAULT_URL)
    assert (args.slow_ms, args.leak_mb_per_s, args.leak_cap_mb) == (
        defaults.CHAOS_SLOW_MS,
        defaults.CHAOS_LEAK_MB_PER_S,
        defaults.CHAOS_LEAK_CAP_MB,
    )
    assert (args.drift_scale, args.seed, args.timeout) == (
        defaults.CHAOS_DRIFT_SCALE,
        defaults.CHAOS_DRIFT_SEED,
        defaults.CHAOS_TIMEOUT_S,
    )


def test_chaos_bad_usage_exits_2_before_any_network_call(capsys):
    assert cli.main(["chaos", "melt"]) == 2
    assert "invalid choice: 'melt'" in capsys.readouterr().err
    assert cli.main(["chaos", "slow", "--slow-ms", "0", "--url", "unused:1"]) == 2
    err = capsys.readouterr().err
    assert "slow_ms must be > 0" in err and "unreachable" not in err
