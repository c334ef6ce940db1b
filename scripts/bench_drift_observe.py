"""Request-path cost of the output drift monitor: one observation per batch (timeit, no server).

What a guard does per successful batch when drift_output is set: check each
request's parameters for the probe marker, then copy the batch's rows into
the model's shared window (an mmap'ed file, here in /dev/shm like the
server's state directory). Prints microseconds per batch, best of 5 repeats:

    .venv/bin/python scripts/bench_drift_observe.py [--number 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from triton_guard.drift.monitor import DriftMonitor, Reference, is_probe_parameters  # noqa: E402
from triton_guard.drift.ring import RowRing  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    reference = Reference.from_probs(rng.dirichlet(np.ones(10), 500))
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        monitor = DriftMonitor(reference, 200, RowRing.shared(os.path.join(tmp, "bench.ring"), 10, 200))
        for batch in (1, 8, 64):
            probs = rng.dirichlet(np.ones(10), batch).astype(np.float32)
            for label, params in (("clients only", ["{}"] * batch),
                                  ("one probe in the batch", ['{"guard_probe":true}'] + ["{}"] * (batch - 1))):
                sizes = [1] * batch
                fn = lambda: monitor.observe_answers(probs, [is_probe_parameters(p) for p in params], lambda: sizes)
                best = min(timeit.repeat(fn, number=args.number, repeat=5)) / args.number
                print(f"batch {batch:>2} ({label}): {best * 1e6:.1f} us per batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
