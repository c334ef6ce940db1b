"""triton_guard.canary.allocator: torch's CUDA allocator view, with a fake shaped like torch.cuda's API."""

from __future__ import annotations

import json
import sys
import types


from triton_guard.canary.allocator import (
    AllocatorReading,
    AllocatorReporter,
    read_allocator,
    read_allocator_states,
    start_reporter,
    state_filename,
    torch_memory_stats,
)

MB = 1 << 20


def memory_stats(allocated=600 * MB, reserved=1000 * MB, retries=0, ooms=0):
    """A torch.cuda.memory_stats() answer: a flat dict of "<stat>.<pool>.<metric>" keys and counters."""
    stats = {}
    for stat, current in (("allocated_bytes", allocated), ("reserved_bytes", reserved), ("active_bytes", allocated),
                          ("inactive_split_bytes", 12 * MB), ("requested_bytes", allocated - MB)):
        for pool in ("all", "large_pool", "small_pool"):
            for metric, value in (("current", current), ("peak", current + MB), ("allocated", 5 * current), ("freed", 4 * current)):
                stats[f"{stat}.{pool}.{metric}"] = value if pool == "all" else value // 2
    stats.update({"num_alloc_retries": retries, "num_ooms": ooms, "num_sync_all_streams": 0,
                  "num_device_alloc": 40, "num_device_free": 3, "max_split_size": -1})
    return stats


class FakeCuda:
    """torch.cuda's part the reporter uses: is_initialized(), memory_stats(device)."""

    def __init__(self, initialized=True):
        self.initialized = initialized
        self.asked = []
        self.stats = memory_stats()

    def is_initialized(self):
        return self.initialized

    def memory_stats(self, device=None):
        self.asked.append(device)
        return self.stats if self.initialized else {}


def test_read_allocator_takes_the_all_pool_current_values_and_the_counters():
    assert read_allocator(memory_stats(600 * MB, 1000 * MB, retries=3, ooms=1)) == (600 * MB, 1000 * MB, 3, 1)


def test_an_empty_reading_means_cuda_has_not_started():
    assert read_allocator({}) is None


def test_the_gap_is_reserved_minus_allocated_never_negative():
    reading = AllocatorReading("m", "m_0_0", 1, "gpu0", 600 * MB, 1000 * MB, 0, 0, 0.0)
    assert reading.gap_bytes == 400 * MB
    assert AllocatorReading("m", "m_0_0", 1, "gpu0", 10, 5, 0, 0, 0.0).gap_bytes == 0


def test_torch_memory_stats_never_starts_cuda(monkeypatch):
    cuda = FakeCuda(initialized=False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert torch_memory_stats(1) == {} and cuda.asked == []
    cuda.initialized = True
    assert read_allocator(torch_memory_stats(1)) == (600 * MB, 1000 * MB, 0, 0)
    assert cuda.asked == [1]


def test_torch_memory_stats_without_torch_loaded_is_empty(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert torch_memory_stats(0) == {}


def test_reporter_writes_what_the_canary_reads(tmp_path):
    cuda = FakeCuda()
    cuda.stats = memory_stats(700 * MB, 1200 * MB, retries=2, ooms=0)
    clock = iter([100.0, 101.0])
    reporter = AllocatorReporter("classifier", "classifier_0_1", 1, str(tmp_path), memory_stats=cuda.memory_stats,
                                 clock=lambda: next(clock))
    written = reporter.report_once()
    assert cuda.asked == [1]
    assert written.device == "gpu1" and written.alloc_retries == 2 and written.at == 100.0
    assert json.loads((tmp_path / state_filename("classifier_0_1")).read_text())["reserved_bytes"] == 1200 * MB
    assert read_allocator_states(str(tmp_path), now=110.0, stale_s=30.0) == [written]
    assert read_allocator_states(str(tmp_path), now=140.0, stale_s=30.0) == []  # the reporter stopped writing


def test_reporter_writes_nothing_before_cuda_starts(tmp_path):
    cuda = FakeCuda(initialized=False)
    reporter = AllocatorReporter("m", "m_0_0", 0, str(tmp_path), memory_stats=cuda.memory_stats)
    assert reporter.report_once() is None
    assert list(tmp_path.iterdir()) == []


def test_unreadable_or_foreign_documents_are_skipped(tmp_path):
    (tmp_path / state_filename("a_0_0")).write_text("{not json")
    (tmp_path / state_filename("b_0_0")).write_text(json.dumps({"model": "b"}))
    (tmp_path / "drift-x.json").write_text("{}")
    assert read_allocator_states(str(tmp_path), 0.0, 10.0) == []
    assert read_allocator_states(str(tmp_path / "missing"), 0.0, 10.0) == []


def test_instance_names_become_safe_distinct_file_names():
    assert state_filename("classifier_0_1") == "allocator-classifier_0_1.json"
    assert state_filename("a/b_0_0") != state_filename("a_b_0_0")
    assert "/" not in state_filename("a/b_0_0")


def test_start_reporter_only_for_a_gpu_instance(tmp_path):
    config = json.dumps({"name": "classifier"})
    cpu = {"model_instance_kind": "CPU", "model_instance_name": "classifier_0_0", "model_config": config}
    assert start_reporter(cpu, str(tmp_path)) is None
    cuda = FakeCuda()
    gpu = {"model_instance_kind": "GPU", "model_instance_device_id": "1", "model_instance_name": "classifier_0_1",
           "model_config": config}
    reporter = start_reporter(gpu, str(tmp_path), memory_stats=cuda.memory_stats, interval_s=3600)
    try:
        assert (reporter.model, reporter.instance, reporter.device_index) == ("classifier", "classifier_0_1", 1)
        reporter.report_once()
        assert (tmp_path / state_filename("classifier_0_1")).exists()
    finally:
        reporter.close()
    assert not (tmp_path / state_filename("classifier_0_1")).exists()  # an unloaded instance leaves nothing behind


def test_a_failing_reading_is_logged_once_until_it_changes_and_never_raised(tmp_path):
    errors = iter(["CUDA error: an illegal memory access was encountered"] * 3 + [None, "disk full"])
    logged = []

    def flaky(device):
        error = next(errors)
        if error:
            raise RuntimeError(error)
        return memory_stats()

    reporter = AllocatorReporter("m", "m_0_0", 0, str(tmp_path), memory_stats=flaky, log=logged.append)
    for _ in range(5):
        reporter.step()
    assert logged == [
        "allocator reporter 'm_0_0': RuntimeError: CUDA error: an illegal memory access was encountered",
        "allocator reporter 'm_0_0': RuntimeError: disk full",
    ]
    assert (tmp_path / state_filename("m_0_0")).exists()  # the good step in between wrote its reading
