"""The threads beside a backend's request path: one function, every interval, until stopped.

The guard runtime runs two (its metrics publisher and its recovery prober),
the drift tap one (the scorer). `may_run()` False skips a round: no
stub-to-server call from these threads before the model has served a request
(during start-up such a call raced the stub's own initialisation messages:
a crashed tritonserver and torch import corruption were seen). A round that
raises is reported and the thread goes on: a bad round must not end it.
"""

from __future__ import annotations

import threading
from typing import Callable


class Periodic(threading.Thread):
    def __init__(
        self,
        name: str,
        interval_s: float,
        work: Callable[[], object],
        *,
        may_run: Callable[[], bool] = lambda: True,
        report: Callable[[str], None] = lambda message: None,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self._work = work
        self._may_run = may_run
        self._report = report
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            if not self._may_run():
                continue
            try:
                self._work()
            except Exception as exc:  # noqa: BLE001 (reported; the next round tries again)
                self._report(f"{self.name}: {type(exc).__name__}: {exc}")

    def stop(self, join_s: float | None = None) -> None:
        self._stop_event.set()
        if join_s is not None and self.is_alive():
            self.join(join_s)
