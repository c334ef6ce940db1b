"""Y = X; the first request starts a warm-up: a 600 MB cache filling as 1 - exp(-t / 1.5 s), then staying.

The shape of a model that warms up (a cache that fills once, allocator pools
growing to their working size): fast at first, slower, then flat. Filled
from a thread in 100 ms steps; the memory is touched, so it is resident.
"""

import math
import threading
import time

import triton_python_backend_utils as pb_utils

from triton_guard.chaos.hook import MB, allocate_host

CACHE_MB = 600
TAU_S = 1.5
STEP_S = 0.1


class TritonPythonModel:
    def initialize(self, args):
        self.cache = []
        self.warming = None
        self.stop = threading.Event()

    def _warm_up(self):
        started, held = time.monotonic(), 0
        while not self.stop.wait(STEP_S):
            target = int(CACHE_MB * MB * (1 - math.exp(-(time.monotonic() - started) / TAU_S)))
            if target - held >= MB:
                self.cache.append(allocate_host(target - held))
                held = target
            if held >= (CACHE_MB - 1) * MB:
                return

    def execute(self, requests):
        if self.warming is None:
            self.warming = threading.Thread(target=self._warm_up, name="warm-up", daemon=True)
            self.warming.start()
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy().copy())])
            for r in requests
        ]

    def finalize(self):
        self.stop.set()
        self.cache.clear()
