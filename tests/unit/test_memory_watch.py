"""triton_guard.canary.memory_watch through the canary runner: samples in, blame and an opt-in reload out.

The canary (canary/runner.py) with a fake server (tests/unit/test_canary.py's
FakeFacts), a fake instance sampler and an injected reload; time is a FakeClock.
"""

from __future__ import annotations

import json

from tests.fakes import FakeClock
from tests.unit.test_canary import PINS, FakeFacts
from triton_guard.canary.allocator import AllocatorReading, state_filename
from triton_guard.canary.checks import expected_runtime
from triton_guard.canary.config import CanaryConfig
from triton_guard.canary.golden_store import GoldenStore
from triton_guard.canary.instances import SERVER_ROW, InstanceMemory
from triton_guard.canary.memory import MemoryReading
from triton_guard.canary.runner import Canary

MB = 1 << 20
GB = 1 << 30
CONFIG = dict(sample_interval_ms=1000, trend_window_s=300.0, trend_min_span_s=60.0, trend_horizon_s=900.0,
              leak_reload_cooldown_s=600.0)


class LeakyServer:
    """Two classifier instances, the second leaking `rate` bytes/s; free memory follows it. A reload replaces both."""

    def __init__(self, clock: FakeClock, rate: float = 20 * MB) -> None:
        self.clock = clock
        self.rate = rate
        self.leak_from = clock()
        self.pids = {"classifier_0_0": 4101, "classifier_0_1": 4102}
        self.gpu_asked = []
        self.note = None

    def leaked(self) -> float:
        return self.rate * (self.clock() - self.leak_from)

    def sample(self, now: float, gpu: bool = False):  # InstanceSampler.sample
        self.gpu_asked.append(gpu)
        return [
            InstanceMemory(SERVER_ROW, SERVER_ROW, 4000, 900 * MB),
            InstanceMemory("classifier", "classifier_0_0", self.pids["classifier_0_0"], 400 * MB),
            InstanceMemory("classifier", "classifier_0_1", self.pids["classifier_0_1"], int(400 * MB + self.leaked())),
        ]

    def reload(self, model: str, why: str) -> str:
        assert model == "classifier"
        self.pids = {"classifier_0_0": 4201, "classifier_0_1": 4202}
        self.rate = 0.0
        return "reloaded"


class Facts(FakeFacts):
    def __init__(self, server: LeakyServer) -> None:
        super().__init__()
        self.server = server

    def system_memory(self):
        return MemoryReading("host", 16 * GB, int(4 * GB - self.server.leaked()))


def canary(tmp_path, server, clock, reload=False, allocator_dir=None, **config):
    return Canary(CanaryConfig(**{**CONFIG, "leak_reload": reload, **config}), Facts(server), GoldenStore([tmp_path]),
                  expected_runtime(PINS, "cpu"), clock=clock, instances=server,
                  allocator_dir=allocator_dir, reload=server.reload if reload else None)


def leak_check(report):
    return next(c for c in report.checks if c.name == "leak_trend")


def sample_for(c, clock, seconds):
    for _ in range(seconds):
        clock.advance(1.0)
        c.sample()


def test_the_sampler_feeds_per_instance_rows_and_the_run_names_the_leaking_one(tmp_path):
    clock = FakeClock(100.0)
    server = LeakyServer(clock)
    c = canary(tmp_path, server, clock)
    sample_for(c, clock, 30)
    assert leak_check(c.run(c.config)).reason.startswith("collecting samples (30 of at least 10")
    sample_for(c, clock, 60)
    check = leak_check(c.run(c.config))
    assert not check.ok
    # 20 MB/s against 2.4 GB of room: after 90 s it has eaten more than half of what is left.
    assert check.reason.startswith("classifier instance classifier_0_1 (pid 4102) +1200 MB/min for ")
    assert check.reason.endswith("2 other instances flat")
    assert server.gpu_asked and not any(server.gpu_asked)  # a CPU server never asks NVML


def test_probes_with_other_thresholds_see_the_same_history(tmp_path):
    clock = FakeClock(100.0)
    server = LeakyServer(clock, rate=0.5 * MB)  # 2.4 GB to the floor at 0.5 MB/s: over an hour
    c = canary(tmp_path, server, clock)
    sample_for(c, clock, 300)  # grown through the whole history kept (trend_window_s)
    assert leak_check(c.run(c.config)).ok
    assert not leak_check(c.run(c.config.with_call_options({"trend_horizon_s": 3 * 3600}))).ok


def test_leak_reload_reloads_once_holds_not_ready_until_the_new_instances_run_then_ready(tmp_path):
    clock = FakeClock(100.0)
    server = LeakyServer(clock)
    c = canary(tmp_path, server, clock, reload=True)
    sample_for(c, clock, 90)
    first = leak_check(c.run(c.config))
    assert c.memory.reloader.wait(5)
    # Held from the moment the reload starts (it may already have returned: it runs on its own thread).
    assert not first.ok and first.value["reloading"].keys() == {"classifier"}
    assert first.reason.startswith(("reloading model 'classifier'", "model 'classifier' reloaded"))
    # Reloaded, but no sample has seen the new processes yet: still held.
    held = leak_check(c.run(c.config))
    assert not held.ok and "waiting for its new instances" in held.reason
    assert held.value["reloads"] == {"classifier": {"reloaded": 1}}
    clock.advance(1.0)
    c.sample()
    back = leak_check(c.run(c.config))
    assert back.ok, back.reason
    assert {row["pid"] for row in back.value["instances"]} == {4000, 4201, 4202}


def test_a_probes_one_off_thresholds_never_reload(tmp_path):
    clock = FakeClock(100.0)
    server = LeakyServer(clock, rate=0.5 * MB)
    c = canary(tmp_path, server, clock, reload=True)
    sample_for(c, clock, 300)
    check = leak_check(c.run(c.config.with_call_options({"trend_horizon_s": 3 * 3600})))
    assert not check.ok and "reloading" not in check.reason
    assert c.memory.reloader.counts == {}


def test_without_leak_reload_nothing_is_reloaded(tmp_path):
    clock = FakeClock(100.0)
    server = LeakyServer(clock)
    c = canary(tmp_path, server, clock, reload=False)
    sample_for(c, clock, 90)
    assert "reloading" not in leak_check(c.run(c.config)).reason
    assert server.pids["classifier_0_1"] == 4102


def test_allocator_readings_in_the_state_directory_reach_the_instance(tmp_path):
    clock = FakeClock(100.0)
    server = LeakyServer(clock, rate=0.0)
    state = tmp_path / "state"
    state.mkdir()
    c = canary(tmp_path / "repo", server, clock, allocator_dir=str(state))
    for second in range(90):
        clock.advance(1.0)
        reading = AllocatorReading("classifier", "classifier_0_1", 4102, "gpu0", 2 * GB, 3 * GB,
                                   0 if second < 80 else 4, 0, clock())
        (state / state_filename("classifier_0_1")).write_text(json.dumps(reading.__dict__))
        c.sample()
    check = leak_check(c.run(c.config))
    assert not check.ok and "4 allocation retries in the last 60 s" in check.reason
