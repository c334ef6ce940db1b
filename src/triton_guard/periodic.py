"""The threads beside a request path: one function, every interval, until stopped (`Periodic`).

The guard runtime runs two (its metrics publisher and its recovery prober),
the drift tap one (the scorer); inside a model's own process, the allocator
reporter (canary/allocator.py) and the chaos hook's leak watcher
(chaos/hook.py) one each. `may_run()` False skips a round: the backends
make no stub-to-server call from these threads before the model has served
a request (during start-up such a call raced the stub's own initialisation
messages: a crashed tritonserver and torch import corruption were seen). A
round that raises is reported and the thread goes on: a bad round must not
end it. With `repeat_reports=False` a failure is reported once, until it
changes or a round succeeds (a thread that runs every few seconds in a
model's process must not fill its log).
"""

from __future__ import annotations

import threading
from typing import Callable


class Periodic(threading.Thread):
    """`name` names the thread and starts every report it makes."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        work: Callable[[], object],
        *,
        may_run: Callable[[], bool] = lambda: True,
        report: Callable[[str], None] = lambda message: None,
        repeat_reports: bool = True,
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.interval_s = interval_s
        self._work = work
        self._may_run = may_run
        self._report = report
        self._repeat_reports = repeat_reports
        self._last_report: str | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.round()

    def round(self) -> None:
        """One round, as the thread runs it: skipped unless may_run(); a failure is reported, never raised."""
        if not self._may_run():
            return
        try:
            self._work()
            self._last_report = None
        except Exception as exc:  # noqa: BLE001 (reported; the next round tries again)
            message = f"{self.name}: {type(exc).__name__}: {exc}"
            if self._repeat_reports or message != self._last_report:
                self._report(message)
            self._last_report = message

    def stop(self, join_s: float | None = None) -> None:
        self._stop_event.set()
        if join_s is not None and self.is_alive():
            self.join(join_s)
