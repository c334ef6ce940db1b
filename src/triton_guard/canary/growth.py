"""Is a memory series growing steadily (a leak), or did it merely warm up?

A series is (time, bytes) samples of one thing's memory: a model instance's
resident or device memory, its allocator's reserved-but-unallocated gap, or
the memory the whole host (or GPU) has in use. `GrowthSeries.growth` answers
with a `Growth`: the recent rate, how long the series has risen steadily,
and whether that counts as steady growth.

The test (docs/memory.md, "The blame method", measures it):

* The last `sustain_s` seconds are cut into SEGMENTS equal segments, and
  each segment is summed up by its median (robust to spikes and to an
  allocator's sawtooth within a segment).
* The series rises steadily when every segment's median is above the one
  before by more than the noise: z times the standard error of a
  difference of two medians, with the noise measured from each segment's
  residuals around its own straight line (so the growth itself is not
  taken for noise), and never less than `min_rise_bytes`.
* It is *steady growth* only if, besides, the newest rise is at least
  FLATTENING_RATIO of the oldest rise in the window: a warm-up or a cache
  filling up decelerates and then stops, a leak does not.

A step (one big allocation), a sawtooth and noise fail the first rule; a
curve that flattens fails the second as soon as it flattens.

How long it has grown steadily (`growing_for_s`) is the longest span, from
`sustain_s` up to all the history kept, over which the same test passes.
`Growth.seconds_to` then says when the floor is reached at this rate, but
only for growth that counts as a leak: steady, and going on for at least
EVIDENCE (one half) of the time it leaves to the floor, i.e. it has already
eaten half of the room that is left (or it has grown through three quarters
of the history kept). A warm-up, a cache filling once or an allocator's long ramp stops
before that unless it is big against the room left, and then it is a real
danger too. A cache that fills at a constant rate, for long, and by more than
a third of the room, is indistinguishable from a leak until it stops
(docs/memory.md says so).

Plain Python; time is injected (no clock here).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from triton_guard import defaults

SEGMENTS = defaults.LEAK_SEGMENTS
FLATTENING_RATIO = defaults.LEAK_FLATTENING_RATIO
NOISE_Z = defaults.LEAK_NOISE_Z
EVIDENCE = defaults.LEAK_EVIDENCE_RATIO
HISTORY_SHARE = 0.75  # growth through this share of the history kept is evidence enough
# Standard error of a sample median is sqrt(pi/2) times the mean's (large samples).
_MEDIAN_SE = math.sqrt(math.pi / 2)
MIN_SEGMENT_SAMPLES = 2


@dataclass(frozen=True)
class Growth:
    rate_bytes_per_s: float  # straight line through the segment medians: the recent rate
    growing_for_s: float  # how long the medians have risen in a row, to half a segment (0: the newest did not rise)
    steady: bool  # rising in every segment of the window and not flattening
    level_bytes: float  # the newest segment's median
    samples: int  # in the window judged
    history_s: float = math.inf  # the history kept (trend_window_s): growing_for_s can say no more

    def seconds_to(self, room_bytes: float, evidence: float = EVIDENCE) -> float:
        """Seconds until `room_bytes` more are used at this rate; inf unless the growth counts as a leak.

        It counts when it is steady and has gone on for at least `evidence` times
        the time it leaves to the floor (or through three quarters of the history kept): a
        warm-up, a filling cache or an allocator's ramp stops before it has
        grown by that share of the room left; a leak does not stop.
        """
        if not self.steady or self.rate_bytes_per_s <= 0:
            return math.inf
        to_floor = max(room_bytes, 0.0) / self.rate_bytes_per_s
        if self.growing_for_s < min(evidence * to_floor, HISTORY_SHARE * self.history_s):
            return math.inf
        return to_floor


class GrowthSeries:
    """Samples over the last `window_s` seconds, and the growth test on them."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._t: deque[float] = deque()
        self._v: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._t)

    @property
    def span_s(self) -> float:
        return self._t[-1] - self._t[0] if len(self._t) > 1 else 0.0

    @property
    def last(self) -> float | None:
        return self._v[-1] if self._v else None

    def add(self, t: float, value: float) -> None:
        self._t.append(t)
        self._v.append(float(value))
        while t - self._t[0] > self.window_s:
            self._t.popleft()
            self._v.popleft()

    def growth(self, sustain_s: float, min_rise_bytes: float, min_samples: int = 0) -> Growth | None:
        """None until the samples span `sustain_s` (and number `min_samples`)."""
        if len(self._t) < max(min_samples, SEGMENTS * MIN_SEGMENT_SAMPLES) or self.span_s < sustain_s:
            return None
        return assess(list(self._t), list(self._v), sustain_s, min_rise_bytes, self.window_s)


def _segment(t: Sequence[float], v: Sequence[float], start: int, stop: int) -> tuple[float, float, int]:
    """(median, residual sum of squares around the segment's own line, its degrees of freedom)."""
    values = sorted(v[start:stop])
    n = stop - start
    half = n // 2
    median = values[half] if n % 2 else (values[half - 1] + values[half]) / 2
    if n < 3:
        return median, 0.0, 0
    ts = t[start:stop]
    vs = v[start:stop]
    mean_t = math.fsum(ts) / n
    mean_v = math.fsum(vs) / n
    stt = svt = svv = 0.0
    for x, y in zip(ts, vs):
        dx, dy = x - mean_t, y - mean_v
        stt += dx * dx
        svt += dx * dy
        svv += dy * dy
    # Residual sum of squares of the least-squares line: Syy - Sxy^2 / Sxx.
    rss = svv - svt * svt / stt if stt > 0 else svv
    return median, max(rss, 0.0), n - 2


def _test(t: Sequence[float], v: Sequence[float], span_s: float, min_rise_bytes: float, uniform: bool = False):
    """The steady-growth test over the last `span_s`: (steady, rising segments, medians, samples), None if short.

    `uniform`: the oldest rise must not be small against the newest either (a span that reaches back
    before the growth began has a small first rise: it does not count as grown all along).
    """
    segment_s = span_s / SEGMENTS
    now = t[-1]
    bounds = [bisect_right(t, now - j * segment_s) for j in range(SEGMENTS + 1)]
    medians, counts = [], []
    rss, dof = 0.0, 0
    for j in range(SEGMENTS):
        start, stop = bounds[j + 1], bounds[j]
        if stop - start < MIN_SEGMENT_SAMPLES:
            return None
        median, seg_rss, seg_dof = _segment(t, v, start, stop)
        medians.append(median)
        counts.append(stop - start)
        rss += seg_rss
        dof += seg_dof
    noise = math.sqrt(rss / dof) if dof else 0.0
    rises = [medians[i] - medians[i + 1] for i in range(SEGMENTS - 1)]
    rising = 0
    for i, rise in enumerate(rises):
        if rise <= _margin(noise, counts[i], counts[i + 1], min_rise_bytes):
            break
        rising += 1
    steady = rising == SEGMENTS - 1 and rises[0] >= FLATTENING_RATIO * rises[-1]
    if uniform:
        steady = steady and rises[-1] >= FLATTENING_RATIO * rises[0]
    return steady, rising, medians, bounds[0] - bounds[SEGMENTS]


def assess(
    t: Sequence[float], v: Sequence[float], sustain_s: float, min_rise_bytes: float, history_s: float = math.inf
) -> Growth | None:
    """The growth test on samples `t`, `v` in time order (`history_s`: how long a history is kept); None if a
    segment has too few samples."""
    found = _test(t, v, sustain_s, min_rise_bytes)
    if found is None:
        return None
    steady, rising, medians, samples = found
    segment_s = sustain_s / SEGMENTS
    # From the middle of the oldest segment that rose into the next to now (give or take half a segment).
    growing_for = (rising + 0.5) * segment_s if rising else 0.0
    if steady:
        # How long it has grown steadily: the longest span, in steps of half sustain_s up to all the
        # samples there are, over which the same test passes (longer spans, longer segments: less noise).
        # The oldest segment of a span counts half: the growth may have begun anywhere in it.
        growing_for = sustain_s * (1 - 0.5 / SEGMENTS)
        span = t[-1] - t[0]
        scale = sustain_s
        while scale < span:
            scale = min(scale + sustain_s / 2, span)
            longer = _test(t, v, scale, min_rise_bytes, uniform=True)
            if longer is None or not longer[0]:
                break
            growing_for = scale * (1 - 0.5 / SEGMENTS)
    # The rate: a straight line through the segment medians (their mid-times are evenly spaced).
    centre = (SEGMENTS - 1) / 2
    weights = [(centre - j) * segment_s for j in range(SEGMENTS)]  # mid-time of segment j minus their mean
    rate = math.fsum(w * m for w, m in zip(weights, medians)) / math.fsum(w * w for w in weights)
    return Growth(rate, growing_for, steady, medians[0], samples, history_s)


def _margin(noise: float, n_a: int, n_b: int, min_rise_bytes: float) -> float:
    """How much a segment median must exceed the one before to count as a rise."""
    return max(min_rise_bytes, NOISE_Z * _MEDIAN_SE * noise * math.sqrt(1 / n_a + 1 / n_b))
