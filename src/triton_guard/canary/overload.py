"""Overload is not a fault: telling a busy server from a broken model, with the server's own evidence.

A golden inference that got no answer to compare (an error came back, no
answer within the deadline, or the previous one is still unanswered) is
judged here before it fails readiness:

* It may count as *overloaded* only when the server refused or delayed it
  for load: its error names a load limit (`load_limit`: a full queue, a
  queue timeout, the guard's bulkhead, the guard's deadline passing while
  the request queued), or it is still waiting in a queue.
* and the model demonstrably answers: Triton's success counter of the
  golden's model (for an ensemble, requests that went through every step)
  rose between a look at the run's start and a second look at least
  `evidence_s` later (the canary waits for it, within its deadline). A hung
  model answers nothing in that window, whatever the load;
* and its goldens were answered right within the last `grace_s` (a model
  that turns wrong is caught by the next golden that gets through, and a
  model whose goldens never get through stops being vouched for).

Anything else (a dead stub, an upstream error, a wrong answer, a timeout
inside the model, no progress) stays a failed golden check, with the
evidence added to its reason. Memory, breakers and stalls have checks of
their own, which overload never touches.

The pod is reported overloaded (the `overload` check, which never fails
readiness, and the triton_guard_canary_overloaded gauge) when a golden was
judged overloaded, when the guards refused requests for load since the
previous look, or when a model was *crowded* over the last `window_s`: it
held, on average, more requests at once than one round of its instances
takes (max_batch_size x instances; for an ensemble, its narrowest step), so
requests wait for later rounds. The average comes from Little's law on
Triton's own counter: requests inside = added request time
(nv_inference_request_duration_us) per second of wall time. A hung model
completes nothing, so it adds no request time and never looks crowded.

Plain Python, time injected; the canary runner feeds it counters read from
Triton's /metrics.
"""

from __future__ import annotations

import enum
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

from triton_guard import defaults, promtext
from triton_guard import metrics as catalogue
from triton_guard.canary.golden_check import golden_check_name
from triton_guard.canary.report import CheckResult

OVERLOAD = "overload"  # the check's name

# The messages with which Triton 2.51 and the guard refuse a request for load; the limit each names.
_LOAD_LIMITS = (
    ("max_queue_size", re.compile(r"Exceeds maximum queue size")),
    ("queue timeout", re.compile(r"Request timeout expired")),
    ("max_inflight", re.compile(r"calls in flight \(max_inflight=\d+\)")),
    ("timeout_ms while queued", re.compile(r"deadline timeout_ms=\d+ passed after")),
)
# Guard rejections that mean load (not an open breaker): bulkhead full, deadline passed while queued.
LOAD_REJECTION_REASONS = ("overloaded", "deadline")
_ANSWERED = "nv_inference_request_success"
MIN_SPAN_S = 1.0  # crowding needs looks at least this far apart
_REQUEST_TIME = "nv_inference_request_duration_us"


def load_limit(message: str) -> str | None:
    """The load limit a refusal message names, or None when the message is not a refusal for load."""
    for limit, pattern in _LOAD_LIMITS:
        if pattern.search(message):
            return limit
    return None


class MissKind(str, enum.Enum):
    REFUSED = "refused"  # an error came back
    LATE = "late"  # no answer within the canary's deadline
    PENDING = "pending"  # the previous golden inference is still unanswered


@dataclass(frozen=True)
class GoldenMiss:
    """A golden inference that gave no answer to compare."""

    model: str
    kind: MissKind
    detail: str  # the error message, or what happened, as the golden check says it
    waited_s: float  # how long the golden inference had been waiting when judged

    @property
    def limit(self) -> str | None:
        """The load limit that kept it from an answer, None when none did."""
        if self.kind is MissKind.REFUSED:
            return load_limit(self.detail)
        return "a queue"  # late or pending: waiting, which load and a hang both look like: evidence decides


@dataclass(frozen=True)
class Counters:
    """One look at the server: what the judge needs from /metrics, per model."""

    at: float  # the judge's clock
    answered: Mapping[str, float]  # successful requests (counter)
    request_us: Mapping[str, float]  # time spent inside the model by its answered requests (counter)
    shed: Mapping[str, float]  # guard rejections for load (counter)

    @classmethod
    def from_samples(cls, at: float, samples: list[promtext.Sample]) -> "Counters":
        shed: dict[str, float] = {}
        for s in samples:
            if s.name == catalogue.REJECTIONS.name and s.labels.get("reason") in LOAD_REJECTION_REASONS:
                shed[s.labels["model"]] = shed.get(s.labels["model"], 0.0) + s.value
        return cls(at, promtext.by_label(samples, _ANSWERED, "model"),
                   promtext.by_label(samples, _REQUEST_TIME, "model"), shed)


@dataclass(frozen=True)
class GoldenVerdict:
    model: str
    overloaded: bool
    reason: str


class OverloadJudge:
    """Judges golden misses and tracks crowding and shedding between looks; one per canary."""

    def __init__(
        self,
        evidence_s: float = defaults.OVERLOAD_EVIDENCE_S,
        grace_s: float = defaults.OVERLOAD_GRACE_S,
        window_s: float = defaults.OVERLOAD_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.evidence_s, self.grace_s, self.window_s = evidence_s, grace_s, window_s
        self.clock = clock
        self._right_at: dict[str, float] = {}
        self._looks: deque[Counters] = deque()
        self._shed_since: dict[str, float] = {}  # load rejections since the previous check, per guarded model
        self._last_shed: Mapping[str, float] | None = None

    # --- feeding ------------------------------------------------------------------

    def answered_right(self, model: str) -> None:
        self._right_at[model] = self.clock()

    def note_goldens(self, goldens: Mapping[str, object] | None) -> None:
        """A run's golden results ({model: its case comparisons, or why none}): who answered right."""
        for model, found in (goldens or {}).items():
            if not isinstance(found, str) and found and all(c.ok for c in found):
                self.answered_right(model)

    def observe(self, counters: Counters) -> None:
        """A look at the server (the sampler's, and each run's)."""
        self._looks.append(counters)
        while self._looks and self._looks[0].at < counters.at - self.window_s:
            self._looks.popleft()
        if self._last_shed is not None:
            for model, total in counters.shed.items():
                grew = total - self._last_shed.get(model, 0.0)
                if grew > 0:  # a counter that went down was reset (a reload): not shedding
                    self._shed_since[model] = self._shed_since.get(model, 0.0) + grew
        self._last_shed = dict(counters.shed)

    # --- judging --------------------------------------------------------------------

    def evidence_at(self, before: Counters) -> float:
        """When the second look may be taken: the progress window is at least evidence_s long."""
        return before.at + self.evidence_s

    def judge(self, miss: GoldenMiss, before: Counters | None, after: Counters | None) -> GoldenVerdict:
        """Overloaded, or failed with the evidence that says why it is not load."""
        limit = miss.limit
        if limit is None:
            return GoldenVerdict(miss.model, False, miss.detail)
        if before is None or after is None:
            return GoldenVerdict(miss.model, False, f"{miss.detail} (no server metrics to tell load from a fault)")
        span = after.at - before.at
        answered = after.answered.get(miss.model, 0.0) - before.answered.get(miss.model, 0.0)
        right_at = self._right_at.get(miss.model)
        if answered <= 0:
            return GoldenVerdict(
                miss.model, False, f"{miss.detail}; and '{miss.model}' answered no request in {span:.1f} s: "
                "not load, the model is stuck")
        if right_at is None:
            return GoldenVerdict(
                miss.model, False, f"{miss.detail}; '{miss.model}' answers ({answered:.0f} requests in {span:.1f} s) "
                "but none of its golden inferences has been answered right yet")
        age = self.clock() - right_at
        if age > self.grace_s or miss.waited_s > self.grace_s:
            return GoldenVerdict(
                miss.model, False, f"{miss.detail}; '{miss.model}' answers ({answered:.0f} requests in {span:.1f} s) "
                f"but its goldens have not been answered right for {max(age, miss.waited_s):.0f} s "
                f"(overload_grace_s={self.grace_s:g})")
        refused = f"refused ({limit})" if miss.kind is MissKind.REFUSED else f"waiting in {limit} for {miss.waited_s:.1f} s"
        return GoldenVerdict(
            miss.model, True, f"overloaded: golden inference {refused} while '{miss.model}' answered "
            f"{answered:.0f} requests in {span:.1f} s; last golden answered right {age:.0f} s ago")

    def inside(self) -> dict[str, float]:
        """Requests inside each model at once, on average over the window's looks (Little's law); {} under 1 s."""
        if len(self._looks) < 2 or self._looks[-1].at - self._looks[0].at < MIN_SPAN_S:
            return {}
        first, last = self._looks[0], self._looks[-1]
        span_us = (last.at - first.at) * 1e6
        # A counter that went down was reset (the model reloaded): no figure for it this window.
        return {m: (t - first.request_us.get(m, 0.0)) / span_us for m, t in last.request_us.items()
                if t >= first.request_us.get(m, 0.0)}

    def crowded(self, capacity: Mapping[str, int]) -> dict[str, dict]:
        """Models that held more requests at once than one round of their instances takes."""
        inside = self.inside()
        return {m: {"inside": round(inside[m], 1), "capacity": room, "window_s": round(self._span(), 1)}
                for m, room in capacity.items() if inside.get(m, 0.0) > room}

    def _span(self) -> float:
        return self._looks[-1].at - self._looks[0].at if self._looks else 0.0

    def check(self, verdicts: list[GoldenVerdict], capacity: Mapping[str, int]) -> CheckResult:
        """The `overload` check: reported, never failing readiness. Shedding counts from the previous check."""
        shed, self._shed_since = self._shed_since, {}
        crowded = self.crowded(capacity)
        busy_goldens = [v for v in verdicts if v.overloaded]
        parts = [f"{golden_check_name(v.model)} {v.reason}" for v in busy_goldens]
        parts += [f"'{m}' held {c['inside']:.0f} requests at once over {c['window_s']:.0f} s, more than one round of "
                  f"its instances takes ({c['capacity']})" for m, c in sorted(crowded.items())]
        parts += [f"the guard of '{m}' refused {n:.0f} requests for load" for m, n in sorted(shed.items())]
        value = {
            "overloaded": bool(parts),
            "goldens": {v.model: v.reason for v in busy_goldens},
            "crowded": crowded,
            "shed": shed,
        }
        limit = {"window_s": self.window_s, "overload_grace_s": self.grace_s}
        reason = ("OVERLOADED: " + "; ".join(parts) + " (reported only: load is not a fault)") if parts else "not overloaded"
        return CheckResult(OVERLOAD, True, value, limit, reason)


class CapacityCache:
    """capacity_of each model's config (an ensemble: its narrowest step's), fetched once per `ttl_s`."""

    def __init__(self, fetch: Callable[[str], Mapping], ttl_s: float = defaults.OVERLOAD_CAPACITY_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch, self.ttl_s, self.clock = fetch, ttl_s, clock
        self._known: dict[str, tuple[float, int | None]] = {}

    def of(self, models) -> dict[str, int]:
        found = {}
        for model in sorted(models):
            at, capacity = self._known.get(model, (None, None))
            if at is None or self.clock() - at > self.ttl_s:
                try:
                    capacity = self._capacity(self.fetch(model))
                except Exception:  # noqa: BLE001  (a model being reloaded: no capacity this time)
                    capacity = None
                self._known[model] = (self.clock(), capacity)
            if capacity is not None:
                found[model] = capacity
        return found

    def _capacity(self, config: Mapping) -> int:
        steps = [s["model_name"] for s in (config.get("ensemble_scheduling") or {}).get("step") or []]
        if steps:  # an ensemble takes at once what its narrowest step does
            return min(capacity_of(self.fetch(step)) for step in steps)
        return capacity_of(config)


def is_overloaded(check: CheckResult) -> bool:
    return bool(check.name == OVERLOAD and isinstance(check.value, dict) and check.value.get("overloaded"))


def capacity_of(config: Mapping) -> int:
    """How many requests a model's instances take at once, from its config as Triton reports it (JSON)."""
    batch = max(1, int(config.get("max_batch_size") or 0))
    instances = sum(int(g.get("count") or 1) for g in config.get("instance_group") or []) or 1
    return batch * instances


def review(
    judge: OverloadJudge,
    results: dict[str, CheckResult],
    misses: Mapping[str, GoldenMiss],
    before: Counters | None,
    look: Callable[[], Counters | None],
    deadline: float,
    sleep: Callable[[float], None] = time.sleep,
) -> list[GoldenVerdict]:
    """Judge every miss in `results` (golden check name -> result, rewritten in place); returns the verdicts.

    When some miss could be load, waits (until the evidence window is long
    enough, never past `deadline`) and takes the second look with `look()`.
    """
    candidates = {m: miss for m, miss in misses.items() if miss.limit is not None}
    after = None
    if candidates and before is not None:
        wait_s = min(judge.evidence_at(before), deadline) - judge.clock()
        if wait_s > 0:
            sleep(wait_s)
        after = look()
    verdicts = []
    for model, miss in misses.items():
        verdict = judge.judge(miss, before, after) if model in candidates else GoldenVerdict(model, False, miss.detail)
        verdicts.append(verdict)
        name = golden_check_name(model)
        old = results[name]
        results[name] = CheckResult(name, verdict.overloaded, old.value, old.limit, verdict.reason)
    return verdicts

