"""Micro-benchmark: microseconds per acquire+record pair, per store.

    PYTHONPATH=src python scripts/bench_breaker.py [--iterations N]

The guard runs one pair per batch; the budget is a few tens of microseconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from triton_guard import defaults  # noqa: E402
from triton_guard.guard.breaker import CircuitBreaker  # noqa: E402
from triton_guard.guard.config import GuardConfig  # noqa: E402
from triton_guard.guard.shared_state import MemoryStore, SharedFileStore  # noqa: E402


def per_pair_us(breaker: CircuitBreaker, iterations: int) -> float:
    def pair() -> None:
        permit = breaker.acquire()
        breaker.record(permit, success=True, duration_s=0.001)

    pair()  # first use creates the record (and the file)
    return timeit.timeit(pair, number=iterations) / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100_000)
    args = parser.parse_args()

    base = defaults.STATE_DIR_BASE if os.path.isdir(defaults.STATE_DIR_BASE) else None
    state_dir = tempfile.mkdtemp(prefix="triton-guard-bench-", dir=base)
    try:
        config = GuardConfig()
        stores = {
            "MemoryStore": MemoryStore(),
            f"SharedFileStore ({state_dir})": SharedFileStore(state_dir),
        }
        for label, store in stores.items():
            us = per_pair_us(CircuitBreaker("bench", config, store), args.iterations)
            print(f"{label:60s} {us:7.2f} us per acquire+record ({args.iterations} iterations)")
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
