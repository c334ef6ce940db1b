"""Request-path cost of the output drift monitor: one observation per batch (timeit, no server).

What a guard does per successful batch when drift_output is set: check each
request's parameters for the probe marker, then copy the batch's rows into
the model's shared window (an mmap'ed file, here in /dev/shm like the
server's state directory). Two calls: the library placement's (one batch's
outputs, DriftMonitor.observe_answers) and the guard backend's (one answer per
request, DriftTap.observe_per_request, run here on a stand-in for
triton_python_backend_utils, which only exists inside Triton). Prints
microseconds per batch, best of 5 repeats:

    .venv/bin/python scripts/bench_drift_observe.py [--number 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import timeit
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from triton_guard.drift.monitor import DriftMonitor, Reference, is_probe_parameters  # noqa: E402
from triton_guard.drift.ring import RowRing  # noqa: E402


class _Request:  # what the tap asks of a Triton request
    def __init__(self, params: str) -> None:
        self._params = params

    def parameters(self) -> str:
        return self._params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    reference = Reference.from_probs(rng.dirichlet(np.ones(10), 500))
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    from triton_guard.backends.drift_tap import DriftTap

    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        monitor = DriftMonitor(reference, 200, RowRing.shared(os.path.join(tmp, "bench.ring"), 10, 200))
        tap = DriftTap.__new__(DriftTap)  # the request-path half only: no scorer thread
        tap.config = types.SimpleNamespace(output="PROBS")
        tap.monitor, tap.width, tap.batched, tap._served = monitor, 10, True, False
        for batch in (1, 8, 64):
            probs = rng.dirichlet(np.ones(10), batch).astype(np.float32)
            for label, params in (("clients only", ["{}"] * batch),
                                  ("one probe in the batch", ['{"guard_probe":true}'] + ["{}"] * (batch - 1))):
                sizes = [1] * batch
                requests = [_Request(p) for p in params]
                per_request = [{"PROBS": probs[i : i + 1]} for i in range(batch)]
                calls = {
                    "library placement": lambda: monitor.observe_answers(
                        probs, [is_probe_parameters(p) for p in params], lambda: sizes),
                    "guard backend": lambda: tap.observe_per_request(per_request, requests),
                }
                for call, fn in calls.items():
                    best = min(timeit.repeat(fn, number=args.number, repeat=5)) / args.number
                    print(f"batch {batch:>2} ({label}), {call}: {best * 1e6:.1f} us per batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
