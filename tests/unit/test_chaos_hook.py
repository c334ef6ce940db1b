"""triton_guard.chaos.hook: the in-model side (before / after, the leak and its watcher, drift, the environment)."""

from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from triton_guard import defaults
from triton_guard.chaos.hook import (
    MB,
    ChaosHook,
    Leak,
    allocate_host,
    hook_from_environment,
    own_instance_name,
    perturbed_weights,
)
from triton_guard.chaos.protocol import ChaosControl, Fault, FaultKind


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


def test_a_leak_aimed_at_one_instance_grows_only_there(control, fake_time):
    hooks = {index: make_hook(control, fake_time, instance=index, allocate=FakeAllocator()) for index in (0, 1)}
    unknown = make_hook(control, fake_time, allocate=FakeAllocator())  # could not tell its index
    control.write("classifier", Fault("leak", leak_mb_per_s=8, leak_cap_mb=20, instance=1, set_at=1.0))
    for hook in (*hooks.values(), unknown):
        hook.sync()
    fake_time.now += 1
    for hook in (*hooks.values(), unknown):
        hook.sync()
    assert (hooks[0].leaked_bytes, hooks[1].leaked_bytes, unknown.leaked_bytes) == (0, 8 * MB, 0)
    # Aimed at every instance again: both leak, the known and the unknown one.
    control.write("classifier", Fault("leak", leak_mb_per_s=8, leak_cap_mb=20, set_at=2.0))
    for hook in (*hooks.values(), unknown):
        hook.sync()
    fake_time.now += 1
    for hook in (*hooks.values(), unknown):
        hook.sync()
    assert (hooks[0].leaked_bytes, hooks[1].leaked_bytes, unknown.leaked_bytes) == (8 * MB, 8 * MB, 8 * MB)


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


def test_own_instance_name_comes_from_the_stubs_command_line(tmp_path):
    argv = [b"/b/python/triton_python_backend_stub", b"/m/classifier/1/model.py", b"triton_guard_1_2_ab-cd",
            b"1048576", b"1048576", b"4000", b"/b/python", b"336", b"classifier_0_1", b"/b/guard", b""]
    (tmp_path / "cmdline").write_bytes(b"\0".join(argv))
    assert own_instance_name(tmp_path / "cmdline") == "classifier_0_1"
    (tmp_path / "python").write_bytes(b"python3\0-m\0pytest\0")
    assert own_instance_name(tmp_path / "python") is None
    assert own_instance_name(tmp_path / "missing") is None


def test_hook_from_environment_knows_its_instance_index(tmp_path):
    hook = hook_from_environment("classifier", environ={defaults.CHAOS_DIR_ENV: str(tmp_path)},
                                 instance_name="classifier_0_1")
    try:
        assert hook.instance == 1
    finally:
        hook.close()
