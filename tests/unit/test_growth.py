"""triton_guard.canary.growth: steady growth (a leak) against warm-ups, caches, steps, sawtooth and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from triton_guard.canary.growth import SEGMENTS, GrowthSeries, assess

MB = float(1 << 20)
SUSTAIN_S = 120.0
MIN_RISE = 1 * MB


def series(values, dt: float = 1.0, window_s: float = 600.0, start: float = 1000.0) -> GrowthSeries:
    s = GrowthSeries(window_s)
    for i, v in enumerate(values):
        s.add(start + i * dt, v)
    return s


def times(seconds: float, dt: float = 1.0) -> np.ndarray:
    return np.arange(0.0, seconds, dt)


def noise(n: int, sigma_mb: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, sigma_mb * MB, n)


def test_a_linear_leak_under_noise_is_steady_growth_at_its_rate():
    t = times(300)
    growth = series(500 * MB + 2 * MB * t + noise(len(t), 3)).growth(SUSTAIN_S, MIN_RISE)
    assert growth.steady
    assert growth.rate_bytes_per_s == pytest.approx(2 * MB, rel=0.1)
    # It has grown for all 300 s: the longest span that passes is all of it, its oldest segment counted half.
    assert growth.growing_for_s == pytest.approx(299 * (1 - 0.5 / SEGMENTS))


def test_growing_for_stops_where_the_growth_began():
    t = times(500)
    values = 500 * MB + 2 * MB * np.clip(t - 300, 0, None) + noise(len(t), 1)  # flat 300 s, then 200 s of leak
    growth = series(values).growth(SUSTAIN_S, MIN_RISE)
    assert growth.steady
    assert 200 - SUSTAIN_S / SEGMENTS <= growth.growing_for_s <= 200 + SUSTAIN_S / SEGMENTS


def test_a_warm_up_that_flattened_is_not_steady_and_projects_no_floor():
    t = times(400)
    values = 500 * MB + 800 * MB * (1 - np.exp(-t / 30)) + noise(len(t), 1)
    growth = series(values).growth(SUSTAIN_S, MIN_RISE)
    assert not growth.steady
    assert growth.seconds_to(10 * MB) == math.inf


def test_a_warm_up_still_growing_but_decelerating_is_not_steady():
    # tau 60 s against 30 s segments: the newest rise is e^-1.5 ~ 0.22 of the oldest, below the ratio.
    t = times(130)
    values = 500 * MB + 2000 * MB * (1 - np.exp(-t / 60))
    growth = series(values).growth(SUSTAIN_S, MIN_RISE)
    assert growth is not None and growth.rate_bytes_per_s > 0
    assert not growth.steady


def test_a_cache_that_filled_once_is_not_steady_once_it_stops():
    t = times(300)
    values = 500 * MB + 5 * MB * np.minimum(t, 230) + noise(len(t), 1)  # filled 1150 MB, stopped 70 s ago
    assert not series(values).growth(SUSTAIN_S, MIN_RISE).steady


def test_one_big_allocation_is_a_step_not_a_leak():
    t = times(300)
    values = 500 * MB + np.where(t >= 240, 400 * MB, 0.0) + noise(len(t), 1)
    assert not series(values).growth(SUSTAIN_S, MIN_RISE).steady


def test_an_allocator_sawtooth_is_not_steady_growth():
    t = times(600)
    for period in (7.0, 25.0, 45.0, 90.0):
        values = 500 * MB + 300 * MB * ((t % period) / period) + noise(len(t), 2)
        growth = series(values).growth(SUSTAIN_S, MIN_RISE)
        assert not growth.steady, period


def test_a_ramp_longer_than_the_sustain_time_is_growth_while_it_lasts():
    # The limit of any trend test, said in docs/memory.md: a sawtooth whose ramp outlasts sustain_s looks like
    # a leak until it drops; only the horizon (rate against the room left) keeps it from being blamed.
    t = times(500)
    values = 500 * MB + 300 * MB * ((t % 200.0) / 200.0)
    assert series(values[:390]).growth(SUSTAIN_S, MIN_RISE).steady  # 190 s into a ramp
    assert not series(values[:430]).growth(SUSTAIN_S, MIN_RISE).steady  # 30 s after the drop


def test_noise_alone_is_not_steady_growth():
    for seed in range(20):
        values = 500 * MB + noise(300, 5, seed)
        assert not series(values).growth(SUSTAIN_S, MIN_RISE).steady, seed


def test_growth_below_the_minimum_rise_per_segment_does_not_count():
    t = times(300)
    slow = 500 * MB + 0.02 * MB * t  # 0.6 MB per 30 s segment, under the 1 MB minimum
    assert not series(slow).growth(SUSTAIN_S, MIN_RISE).steady
    assert series(slow).growth(SUSTAIN_S, 0.1 * MB).steady


def test_no_verdict_before_the_samples_span_the_sustain_time_or_without_enough_samples():
    t = times(100)
    assert series(500 * MB + 5 * MB * t).growth(SUSTAIN_S, MIN_RISE) is None
    t = times(300)
    assert series(500 * MB + 5 * MB * t).growth(SUSTAIN_S, MIN_RISE, min_samples=400) is None
    # One sample per 40 s leaves a 30 s segment empty.
    assert series(500 * MB + 5 * MB * times(300, 40), dt=40).growth(SUSTAIN_S, MIN_RISE) is None


def test_irregular_sampling_is_judged_by_time_not_by_count():
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.uniform(0.2, 1.8, 400))
    s = GrowthSeries(600)
    for x in t:
        s.add(float(x), 500 * MB + 3 * MB * x)
    growth = s.growth(SUSTAIN_S, MIN_RISE)
    assert growth.steady and growth.rate_bytes_per_s == pytest.approx(3 * MB, rel=0.02)


def test_the_window_drops_old_samples():
    s = series(np.zeros(100), window_s=30)
    assert len(s) == 31 and s.span_s == 30


def test_seconds_to_is_room_over_rate_once_the_growth_counts_as_a_leak():
    t = times(300)
    growth = series(500 * MB + 2 * MB * t).growth(SUSTAIN_S, MIN_RISE)  # ~285 s of steady growth at 2 MB/s
    assert growth.seconds_to(1000 * MB) == pytest.approx(500, rel=0.01)  # grown for over half the 500 s left
    assert growth.seconds_to(-5 * MB) == 0.0  # already past the floor


def test_steady_growth_counts_as_a_leak_once_it_has_grown_by_half_of_what_is_left():
    t = times(150)
    growth = series(500 * MB + 2 * MB * t).growth(SUSTAIN_S, MIN_RISE)  # steady for ~135 s
    assert growth.steady
    assert growth.seconds_to(1000 * MB) == math.inf  # 500 s left: half of it not seen yet (a fill may still stop)
    assert growth.seconds_to(500 * MB) == pytest.approx(250, rel=0.02)  # 250 s left: seen for more than half
    assert growth.seconds_to(1000 * MB, evidence=0.0) == pytest.approx(500, rel=0.02)


def test_growth_through_the_whole_history_kept_is_enough_evidence():
    # A slow leak: half the time to the floor (2000 s) is more than the 600 s history can show.
    t = times(700)
    growth = series(500 * MB + 1 * MB * t, window_s=600).growth(SUSTAIN_S, MIN_RISE)
    assert growth.history_s == 600 and growth.growing_for_s >= 0.75 * 600
    assert growth.seconds_to(2000 * MB) == pytest.approx(2000, rel=0.02)


def test_assess_reports_the_newest_level_and_the_samples_judged():
    t = times(240).tolist()
    v = [100 * MB + MB * x for x in t]
    growth = assess(t, v, SUSTAIN_S, MIN_RISE)
    newest = [x for x in v if x > v[-1] - 30 * MB]
    assert growth.level_bytes == pytest.approx(float(np.median(newest)))
    assert growth.samples == 120
