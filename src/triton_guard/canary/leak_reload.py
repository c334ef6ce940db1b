"""Opt-in: reload the model whose instance leaks, before the pod starves.

With the canary parameter `leak_reload` on, a model whose instance the leak
trend blames (steady growth reaching the floor within the horizon) is
reloaded through Triton's repository API (triton_guard.guard.healer, from a
thread of its own), at most once per `leak_reload_cooldown_s` per model,
logged and counted. Triton can only reload a whole model, so every instance
of it restarts; requests already admitted finish on the old instances
(tests/integration/test_leak_instances.py pins what Triton 2.51 does).

Until the reload has returned and the model's instances run in new
processes, `holding()` names the model, and the leak_trend check stays
failed: the probe says not ready until the new instance is up.

Never reloaded: the canary itself (it runs this) and the server's own row.
No Triton import; the reload is an injected callable, time is injected.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from triton_guard import defaults
from triton_guard.canary.instances import InstanceMemory
from triton_guard.canary.leak import InstanceVerdict, duration, per_minute

RESULTS = ("reloaded", "skipped", "failed")  # what a reload can come to (triton_guard.guard.healer.SideHealer.heal)
Reload = Callable[[str, str], str]  # (model, why) -> one of RESULTS
# After the reload returned: how long the new instances may take to show up in the process table.
APPEAR_S = defaults.HEAL_HTTP_TIMEOUT_S


@dataclass
class _Reload:
    model: str
    why: str
    old_pids: frozenset[int]
    started: float
    thread: threading.Thread | None = None
    result: str | None = None
    ended: float | None = None
    done: threading.Event = field(default_factory=threading.Event)


class LeakReloader:
    def __init__(
        self,
        reload: Reload,
        cooldown_s: float,
        clock: Callable[[], float],
        log: Callable[[str], None],
        protected: Iterable[str] = (defaults.CANARY_MODEL,),
        run_in_thread: bool = True,
    ) -> None:
        self._reload = reload
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.log = log
        self.protected = frozenset(protected)
        self.run_in_thread = run_in_thread
        self.counts: dict[str, dict[str, int]] = {}  # {model: {result: n}}, for the metric
        self._last: dict[str, float] = {}
        self._current: dict[str, _Reload] = {}
        self._lock = threading.Lock()

    def consider(self, blamed: list[InstanceVerdict], rows: list[InstanceMemory], source: str) -> list[str]:
        """Start a reload for each blamed model that may have one now; returns the models started."""
        started = []
        for verdict in blamed:
            model = verdict.row.model
            if verdict.row.is_server or model in self.protected:
                continue
            with self._lock:
                if model in self._current:
                    continue
                now = self.clock()
                if now - self._last.get(model, -math.inf) < self.cooldown_s:
                    continue
                self._last[model] = now
                why = (f"its instance {verdict.row.instance} (pid {verdict.row.pid}) leaks "
                       f"{per_minute(verdict.rate)}, the {source} floor in {duration(verdict.seconds_to_floor)}")
                job = _Reload(model, why, frozenset(r.pid for r in rows if r.model == model), now)
                self._current[model] = job
            self.log(f"canary: reloading model '{model}': {why} (leak_reload is on; next reload of it "
                     f"no sooner than {duration(self.cooldown_s)})")
            if self.run_in_thread:
                job.thread = threading.Thread(target=self._run, args=(job,), name=f"leak-reload-{model}", daemon=True)
                job.thread.start()
            else:
                self._run(job)
            started.append(model)
        return started

    def _run(self, job: _Reload) -> None:
        try:
            result = self._reload(job.model, job.why)
        except Exception as exc:  # the healer logs its own failures; this is a bug's last resort
            self.log(f"canary: reloading model '{job.model}' failed: {type(exc).__name__}: {exc}")
            result = "failed"
        with self._lock:
            job.result = result if result in RESULTS else "failed"
            job.ended = self.clock()
            per_model = self.counts.setdefault(job.model, {})
            per_model[job.result] = per_model.get(job.result, 0) + 1
        job.done.set()
        self.log(f"canary: reload of model '{job.model}' {job.result}")

    def holding(self, rows: list[InstanceMemory]) -> dict[str, str]:
        """{model: why the probe stays not ready} while a reload runs or its new instances are not up yet."""
        held = {}
        with self._lock:
            for model, job in list(self._current.items()):
                if job.result is None:
                    held[model] = f"reloading model '{model}' ({job.why}): not ready until its new instances serve"
                    continue
                new = [r for r in rows if r.model == model and r.pid not in job.old_pids]
                waited = self.clock() - (job.ended or job.started)
                if job.result == "reloaded" and not new and waited < APPEAR_S:
                    held[model] = f"model '{model}' reloaded ({job.why}): waiting for its new instances"
                    continue
                del self._current[model]  # back (or the reload failed: the blame says the rest)
        return held

    def wait(self, timeout_s: float) -> bool:
        """For tests: until every reload in flight has returned."""
        with self._lock:
            jobs = list(self._current.values())
        return all(job.done.wait(timeout_s) for job in jobs)


def side_reload(
    http_url: str, api_key: str | None, state_dir: str, min_interval_s: float, log: Callable[[str], None],
    **healer_options,
) -> Reload:
    """A `Reload` through Triton's repository API: triton_guard.guard.healer.SideHealer, in the calling thread.

    `min_interval_s` keeps it from reloading a model the dead-stub healer has just
    reloaded (they share the healer's stamp in the state directory).
    """
    from triton_guard.guard.healer import SideHealer

    def reload(model: str, why: str) -> str:
        healer = SideHealer(model, http_url=http_url, api_key=api_key, min_interval_s=min_interval_s,
                            state_dir=state_dir, log=log, why=f"leaks: {why}", **healer_options)
        return healer.heal()

    return reload
