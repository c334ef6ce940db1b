"""Device memory per process from NVML, for the canary's per-instance rows on a GPU host.

NVML (`nvidia-ml-py`, imported as `pynvml`) lists every process with a CUDA
context on each GPU and the device memory it holds
(nvmlDeviceGetComputeRunningProcesses). The package is optional: it is
imported only on a GPU host, the first time it is needed; without it, or
without a driver, `NvmlUnavailable` says what is missing and the canary
keeps its per-instance rows to host memory. No CUDA context is created.

Unit-tested with a fake module shaped like pynvml.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Callable

from triton_guard.errors import NvmlUnavailable

INSTALL_HINT = "per-instance GPU memory needs the nvidia-ml-py package (pip install nvidia-ml-py)"


def _import_pynvml() -> ModuleType:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        raise NvmlUnavailable(INSTALL_HINT) from None
    return pynvml


class GpuProcesses:
    """Callable: {pid: {"gpu<index>": bytes}} for every compute process on every GPU."""

    def __init__(self, load: Callable[[], ModuleType] = _import_pynvml) -> None:
        self._load = load
        self._nvml: ModuleType | None = None
        self._failure: str | None = None
        self._lock = threading.Lock()

    def _module(self) -> ModuleType:
        with self._lock:
            if self._failure is not None:
                raise NvmlUnavailable(self._failure)
            if self._nvml is None:
                try:
                    nvml = self._load()
                    nvml.nvmlInit()
                except NvmlUnavailable as exc:
                    self._failure = str(exc)
                    raise
                except Exception as exc:  # pynvml.NVMLError: no driver, no permission
                    self._failure = f"NVML could not start: {exc}"
                    raise NvmlUnavailable(self._failure) from None
                self._nvml = nvml
            return self._nvml

    def __call__(self) -> dict[int, dict[str, int]]:
        nvml = self._module()
        found: dict[int, dict[str, int]] = {}
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    used = process.usedGpuMemory  # None when the driver cannot say (e.g. under MIG without rights)
                    if used is None:
                        continue
                    devices = found.setdefault(int(process.pid), {})
                    devices[f"gpu{index}"] = devices.get(f"gpu{index}", 0) + int(used)
        except Exception as exc:  # pynvml.NVMLError mid-way (GPU lost): say so, retry next sample
            raise NvmlUnavailable(f"NVML: {exc}") from None
        return found

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:
                    pass
                self._nvml = None
