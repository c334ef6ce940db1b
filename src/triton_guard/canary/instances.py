"""Which model instance holds how much memory: the canary's per-instance rows.

Every Python-backend model instance is a process of its own, a
`triton_python_backend_stub` forked by tritonserver; its argv carries the
model's file (`<repository>/<model>/<version>/model.py`) and the instance's
name as Triton gives it (`<model>_<group>_<index>`, e.g. classifier_0_1, or
`<group name>_<index>` for a named instance group). Its resident memory comes
from /proc. The server process itself is one more row (`tritonserver`): C++
backends (TensorRT, ONNX Runtime, PyTorch's libtorch backend) live in it. On a
GPU host, NVML adds each process's device memory (triton_guard.canary.nvml).

The /proc scan of a server's stubs is triton_guard.server.processes.scan_stubs
(LocalServer.stub_pids uses it too); `InstanceSampler` keeps the list between
samples and rescans only every RESCAN_S or when a known stub is gone, so a
sample costs one small read per stub. Everything takes a /proc root, so tests point it at a fake tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from triton_guard import defaults
from triton_guard.server.processes import StubProcess, scan_stubs

SERVER_ROW = "tritonserver"  # model and instance name of the server process's own row
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
RESCAN_S = defaults.INSTANCE_RESCAN_S


@dataclass(frozen=True)
class InstanceMemory:
    """One row: a model instance (or the server), its resident memory and, on a GPU host, its device memory."""

    model: str
    instance: str
    pid: int
    host_bytes: int
    gpu_bytes: int | None = None  # None: not known (no GPU, or NVML unavailable)
    devices: tuple[str, ...] = ()  # the GPUs it holds memory on (NVML indexes: gpu0, gpu1, ...)

    @property
    def device(self) -> str:
        return ",".join(self.devices) if self.devices else "cpu"

    @property
    def is_server(self) -> bool:
        return self.instance == SERVER_ROW


def resident_bytes(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Resident memory (VmRSS) of one process, or None if it is gone."""
    try:
        return int((proc / str(pid) / "statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


# gpu(pid -> {device: bytes}); raises triton_guard.canary.nvml.NvmlUnavailable when it cannot say.
GpuByPid = Callable[[], Mapping[int, Mapping[str, int]]]


class InstanceSampler:
    """The rows of one server, sampled as often as the canary's sampler asks."""

    def __init__(
        self,
        server_pid: int,
        proc: Path = Path("/proc"),
        gpu_by_pid: GpuByPid | None = None,
        rescan_s: float = RESCAN_S,
    ) -> None:
        self.server_pid = server_pid
        self.proc = Path(proc)
        self.gpu_by_pid = gpu_by_pid  # set on a GPU host (triton_guard.canary.nvml)
        self.rescan_s = rescan_s
        self.note: str | None = None  # why a part is missing (e.g. no NVML), for the report
        self._stubs: list[StubProcess] = []
        self._scanned_at: float | None = None

    def sample(self, now: float, gpu: bool = False) -> list[InstanceMemory]:
        """The rows now; with `gpu` (a GPU host) their device memory too, from NVML (started on first use)."""
        if gpu and self.gpu_by_pid is None:
            from triton_guard.canary.nvml import GpuProcesses

            self.gpu_by_pid = GpuProcesses()
        if self._scanned_at is None or now - self._scanned_at >= self.rescan_s:
            self._rescan(now)
        rows = self._rows()
        if rows is None:  # a known stub is gone (a reload, a crash): its successor is new
            self._rescan(now)
            rows = self._rows() or []
        return self._with_gpu(rows) if gpu else rows

    def _rescan(self, now: float) -> None:
        self._stubs = scan_stubs(self.server_pid, self.proc)
        self._scanned_at = now

    def _rows(self) -> list[InstanceMemory] | None:
        rows = []
        server = resident_bytes(self.server_pid, self.proc)
        if server is not None:
            rows.append(InstanceMemory(SERVER_ROW, SERVER_ROW, self.server_pid, server))
        for stub in self._stubs:
            rss = resident_bytes(stub.pid, self.proc)
            if rss is None:
                return None
            rows.append(InstanceMemory(stub.model, stub.instance, stub.pid, rss))
        return rows

    def _with_gpu(self, rows: list[InstanceMemory]) -> list[InstanceMemory]:
        if self.gpu_by_pid is None:
            return rows
        from triton_guard.canary.nvml import NvmlUnavailable

        try:
            by_pid = self.gpu_by_pid()
        except NvmlUnavailable as exc:
            self.note = str(exc)
            return rows
        ours = {r.pid for r in rows}
        if by_pid and not ours & set(by_pid):
            self.note = ("NVML lists GPU processes but none of this server's (in a container NVML reports the "
                         "host's pids unless the pod shares the host's PID namespace): per-instance GPU memory unknown")
            return rows
        self.note = None
        return [
            InstanceMemory(r.model, r.instance, r.pid, r.host_bytes,
                           sum(by_pid.get(r.pid, {}).values()), tuple(sorted(by_pid.get(r.pid, {}))))
            for r in rows
        ]
