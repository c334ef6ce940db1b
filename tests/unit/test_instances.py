"""Memory per model instance from a fake /proc and a fake pynvml.

triton_guard.server.processes (the stub scan), triton_guard.canary.instances
(the rows) and triton_guard.canary.nvml (device memory per process).
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from triton_guard.canary.instances import PAGE_SIZE, SERVER_ROW, InstanceMemory, InstanceSampler, resident_bytes
from triton_guard.server.processes import StubProcess, instance_index, parse_stub_argv, scan_stubs
from triton_guard.canary.nvml import INSTALL_HINT, GpuProcesses, NvmlUnavailable

SERVER = 4000
STUB = "/opt/tritonserver/backends/python/triton_python_backend_stub"


def stub_argv(model_path: str, instance: str, backend_dir: str = "DEFAULT") -> list[str]:
    # The layout python_backend 24.10 launches its stub with (seen on a real server).
    return [STUB, model_path, f"triton_guard_1_2_8f48c632-46e1-49f5-b825-3ae54ab42ea7", "1048576", "1048576",
            str(SERVER), "/opt/tritonserver/backends/python", "336", instance, backend_dir, ""]


def add_process(proc: Path, pid: int, parent: int, argv: list[str], resident_pages: int, comm: str = "stub") -> None:
    d = proc / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv))
    (d / "stat").write_text(f"{pid} ({comm}) S {parent} {pid} {pid} 0 -1 4194560 1 0 0 0\n")
    (d / "statm").write_text(f"{resident_pages * 3} {resident_pages} 100 1 0 50 0\n")


@pytest.fixture
def proc(tmp_path):
    root = tmp_path / "proc"
    add_process(root, SERVER, 1, ["tritonserver", "--model-repository=/m"], 1000, comm="tritonserver")
    add_process(root, 4101, SERVER, stub_argv("/m/classifier/1/model.py", "classifier_0_0", "/b/guard"), 2000)
    add_process(root, 4102, SERVER, stub_argv("/m/classifier/1/model.py", "classifier_0_1", "/b/guard"), 3000)
    add_process(root, 4103, SERVER, stub_argv("/m/canary/1/model.py", "canary_0_0"), 500)
    # A named instance group: Triton names the instance <group>_<index>.
    add_process(root, 4104, SERVER, stub_argv("/m/healthy/1/model.py", "healthy_0"), 400, comm="a (weird) name")
    # Another server's stub, and a child of ours that is not a stub.
    add_process(root, 5101, 5000, stub_argv("/m/classifier/1/model.py", "classifier_0_0"), 2000)
    add_process(root, 4105, SERVER, ["/bin/sh", "-c", "true"], 10)
    (root / "self").mkdir()  # not a pid
    return root


def test_scan_finds_this_servers_stubs_with_model_and_instance(proc):
    assert scan_stubs(SERVER, proc) == [
        StubProcess(4103, "canary", "canary_0_0"),
        StubProcess(4101, "classifier", "classifier_0_0"),
        StubProcess(4102, "classifier", "classifier_0_1"),
        StubProcess(4104, "healthy", "healthy_0"),
    ]


def test_scan_of_a_missing_proc_is_empty(tmp_path):
    assert scan_stubs(SERVER, tmp_path / "nothing") == []


def test_argv_that_is_not_a_stub_is_not_parsed():
    assert parse_stub_argv([b"/usr/bin/python3", b"/m/x/1/model.py", b"x_0_0"]) is None
    assert parse_stub_argv([]) is None
    assert parse_stub_argv([STUB.encode(), b"/m/x/1/model.py", b"1048576"]) is None


def test_instance_index_is_the_last_number_of_the_name():
    assert instance_index("classifier_0_1") == 1
    assert instance_index("healthy_3") == 3
    assert instance_index("classifier_guard_1_12") == 12
    assert instance_index("tritonserver") is None


def test_resident_bytes_are_pages_times_the_page_size(proc):
    assert resident_bytes(4102, proc) == 3000 * PAGE_SIZE
    assert resident_bytes(999, proc) is None


def test_sampler_rows_are_the_server_then_every_stub(proc):
    rows = InstanceSampler(SERVER, proc).sample(now=0.0)
    assert rows[0] == InstanceMemory(SERVER_ROW, SERVER_ROW, SERVER, 1000 * PAGE_SIZE)
    assert rows[0].is_server and rows[0].device == "cpu"
    assert [(r.model, r.instance, r.pid, r.host_bytes) for r in rows[1:]] == [
        ("canary", "canary_0_0", 4103, 500 * PAGE_SIZE),
        ("classifier", "classifier_0_0", 4101, 2000 * PAGE_SIZE),
        ("classifier", "classifier_0_1", 4102, 3000 * PAGE_SIZE),
        ("healthy", "healthy_0", 4104, 400 * PAGE_SIZE),
    ]


def test_a_new_stub_is_seen_at_the_next_rescan_and_a_vanished_one_at_once(proc):
    sampler = InstanceSampler(SERVER, proc, rescan_s=10.0)
    assert len(sampler.sample(now=0.0)) == 5
    add_process(proc, 4106, SERVER, stub_argv("/m/late/1/model.py", "late_0_0"), 100)
    assert "late_0_0" not in {r.instance for r in sampler.sample(now=5.0)}  # between rescans: one read per stub
    assert "late_0_0" in {r.instance for r in sampler.sample(now=10.0)}
    # A reload: the old stub is gone, its successor has a new pid; seen without waiting for the rescan.
    for name in ("cmdline", "stat", "statm"):
        (proc / "4102" / name).unlink()
    (proc / "4102").rmdir()
    add_process(proc, 4200, SERVER, stub_argv("/m/classifier/1/model.py", "classifier_0_1"), 3000)
    rows = {r.instance: r.pid for r in sampler.sample(now=11.0)}
    assert rows["classifier_0_1"] == 4200


# --- NVML -----------------------------------------------------------------------------


class FakeProcessInfo:
    """Shaped like pynvml's c_nvmlProcessInfo_t: pid, usedGpuMemory (None when the driver cannot say)."""

    def __init__(self, pid, used):
        self.pid = pid
        self.usedGpuMemory = used
        self.gpuInstanceId = 0xFFFFFFFF
        self.computeInstanceId = 0xFFFFFFFF


def fake_pynvml(processes_by_device, fail_init=None, fail_list=None):
    calls = {"init": 0, "shutdown": 0}

    class NVMLError(Exception):
        pass

    def nvmlInit():
        calls["init"] += 1
        if fail_init:
            raise NVMLError(fail_init)

    def nvmlDeviceGetComputeRunningProcesses(handle):
        if fail_list:
            raise NVMLError(fail_list)
        return [FakeProcessInfo(pid, used) for pid, used in processes_by_device[handle]]

    module = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=nvmlInit,
        nvmlShutdown=lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: len(processes_by_device),
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetComputeRunningProcesses=nvmlDeviceGetComputeRunningProcesses,
    )
    return module, calls


def test_nvml_gives_device_memory_per_pid_and_device():
    module, calls = fake_pynvml({0: [(4101, 300 << 20), (4102, 500 << 20), (4102, 1 << 20)], 1: [(4102, 700 << 20), (77, None)]})
    gpu = GpuProcesses(load=lambda: module)
    assert gpu() == {4101: {"gpu0": 300 << 20}, 4102: {"gpu0": 501 << 20, "gpu1": 700 << 20}}
    gpu()
    assert calls["init"] == 1  # started once
    gpu.close()
    assert calls["shutdown"] == 1


def test_without_the_package_nvml_says_how_to_install_it_and_does_not_retry():
    attempts = []

    def load():
        attempts.append(1)
        raise NvmlUnavailable(INSTALL_HINT)

    gpu = GpuProcesses(load=load)
    for _ in range(2):
        with pytest.raises(NvmlUnavailable, match="pip install nvidia-ml-py"):
            gpu()
    assert len(attempts) == 1


def test_the_real_import_without_pynvml_raises_the_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    with pytest.raises(NvmlUnavailable, match="nvidia-ml-py"):
        GpuProcesses()()


def test_nvml_without_a_driver_says_so():
    module, _ = fake_pynvml({}, fail_init="Driver Not Loaded")
    with pytest.raises(NvmlUnavailable, match="NVML could not start: Driver Not Loaded"):
        GpuProcesses(load=lambda: module)()


def test_an_nvml_error_mid_way_is_unavailable_for_that_sample():
    module, _ = fake_pynvml({0: []}, fail_list="GPU is lost")
    with pytest.raises(NvmlUnavailable, match="GPU is lost"):
        GpuProcesses(load=lambda: module)()


def test_sampler_adds_gpu_memory_from_nvml(proc):
    module, _ = fake_pynvml({0: [(4101, 300 << 20), (4102, 500 << 20), (SERVER, 100 << 20)], 1: [(4102, 7 << 20)]})
    sampler = InstanceSampler(SERVER, proc, gpu_by_pid=GpuProcesses(load=lambda: module))
    assert all(r.gpu_bytes is None for r in sampler.sample(0.0))  # a CPU server's sample never asks NVML
    rows = {r.instance: r for r in sampler.sample(0.0, gpu=True)}
    assert rows["classifier_0_1"].gpu_bytes == 507 << 20 and rows["classifier_0_1"].device == "gpu0,gpu1"
    assert rows["classifier_0_0"].gpu_bytes == 300 << 20 and rows["classifier_0_0"].device == "gpu0"
    assert rows[SERVER_ROW].gpu_bytes == 100 << 20
    assert rows["canary_0_0"].gpu_bytes == 0 and rows["canary_0_0"].device == "cpu"  # no CUDA context


def test_sampler_without_nvml_keeps_host_rows_and_says_why(proc):
    def unavailable():
        raise NvmlUnavailable(INSTALL_HINT)

    sampler = InstanceSampler(SERVER, proc, gpu_by_pid=unavailable)
    rows = sampler.sample(0.0, gpu=True)
    assert all(r.gpu_bytes is None for r in rows) and len(rows) == 5
    assert sampler.note == INSTALL_HINT


def test_nvml_pids_from_another_pid_namespace_are_not_matched_and_the_note_says_so(proc):
    sampler = InstanceSampler(SERVER, proc, gpu_by_pid=lambda: {9101: {"gpu0": 300 << 20}})
    assert all(r.gpu_bytes is None for r in sampler.sample(0.0, gpu=True))
    assert "PID namespace" in sampler.note



def test_on_a_gpu_host_nvml_is_started_on_first_use(proc, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    sampler = InstanceSampler(SERVER, proc)
    assert sampler.sample(0.0) and sampler.gpu_by_pid is None and sampler.note is None  # CPU: never imported
    rows = sampler.sample(1.0, gpu=True)
    assert isinstance(sampler.gpu_by_pid, GpuProcesses) and len(rows) == 5
    assert sampler.note == INSTALL_HINT
