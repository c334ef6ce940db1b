"""triton_guard.drift.monitor: PSI, the reference, window scoring and the ring-buffer monitor.

Expected values are worked out by hand (or from closed forms: for one degree
of freedom the chi-squared survival function is erfc(sqrt(x / 2))), not by
calling the code under test.
"""

from __future__ import annotations

import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from triton_guard import defaults
from triton_guard.drift.monitor import REFERENCE_FILE, DriftMonitor, Reference, psi, score
from triton_guard.canary.goldens import GOLDENS_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_REFERENCE = REPO_ROOT / "model_repository" / "canary" / GOLDENS_DIR / REFERENCE_FILE
EPS = 1e-4  # drift.py's PSI smoothing for empty bins


def entropy_of(probs: np.ndarray) -> np.ndarray:
    """-sum p ln p per row, with 0 ln 0 = 0."""
    return np.array([-sum(p * math.log(p) for p in row if p > 0) for row in np.asarray(probs)])


def chi2_sf_1df(statistic: float) -> float:
    return math.erfc(math.sqrt(statistic / 2))


# --- psi ------------------------------------------------------------------------


def test_psi_hand_computed():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 ln 3
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(0.25 * math.log(3), rel=1e-12)
    # Four bins: 0.1 ln(0.2/0.1) + 0 + (-0.1) ln(0.2/0.3) + 0
    expected = 0.1 * math.log(2) - 0.1 * math.log(2 / 3)
    assert psi(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.2, 0.2, 0.2, 0.4])) == pytest.approx(expected, rel=1e-12)


def test_psi_empty_bin_uses_epsilon():
    # The empty bin counts as EPS: (EPS - 0.5) ln(EPS / 0.5) + (1 - 0.5) ln(1 / 0.5)
    expected = (EPS - 0.5) * math.log(EPS / 0.5) + 0.5 * math.log(2)
    value = psi(np.array([0.5, 0.5]), np.array([0.0, 1.0]))
    assert value == pytest.approx(expected, rel=1e-12)
    assert value == pytest.approx(4.6043224, rel=1e-6)
    assert math.isfinite(psi(np.array([0.0, 1.0]), np.array([0.5, 0.5])))


def test_psi_zero_for_equal_and_symmetric():
    a, b = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.25, 0.25, 0.25, 0.25])
    assert psi(a, a) == 0.0
    assert psi(a, b) == pytest.approx(psi(b, a), rel=1e-12)
    assert psi(a, b) > 0


# --- Reference --------------------------------------------------------------------

# 11 rows over 3 classes, rows out of order; row i puts P_MAX[i] on class LABELS[i]
# and the rest on the next class, so every entropy is distinct.
P_MAX = [0.8, 1.0, 0.55, 0.95, 0.7, 0.6, 0.9, 0.52, 0.85, 0.75, 0.65]
LABELS = [0, 0, 1, 0, 2, 1, 0, 2, 1, 0, 2]


def constructed_probs() -> np.ndarray:
    probs = np.zeros((len(P_MAX), 3))
    for row, (p, label) in enumerate(zip(P_MAX, LABELS)):
        probs[row, label] = p
        probs[row, (label + 1) % 3] = 1.0 - p
    return probs


def test_reference_class_freq_confidence_and_decile_edges():
    reference = Reference.from_probs(constructed_probs())
    np.testing.assert_allclose(reference.class_freq, [5 / 11, 3 / 11, 3 / 11], rtol=1e-12)
    np.testing.assert_allclose(reference.confidence, sorted(P_MAX), rtol=1e-12)
    # 11 samples: decile k (k = 1..9) falls exactly on the k-th smallest entropy (0-based),
    # so the inner edges are the sorted entropies without the smallest and the largest.
    entropies = sorted(-p * math.log(p) - (1 - p) * math.log(1 - p) if p < 1 else 0.0 for p in P_MAX)
    np.testing.assert_allclose(reference.entropy_edges, entropies[1:10], rtol=1e-9, atol=1e-12)
    assert len(reference.entropy_edges) == 9


def test_reference_edges_interpolate_between_samples():
    # Entropies 0, ln 2, ln 3, ln 4 (one-hot, then uniform over 2, 3, 4 classes); quartiles
    # at positions 0.75, 1.5, 2.25 of the sorted sample, linearly interpolated.
    probs = np.array([[1, 0, 0, 0], [0.5, 0.5, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0], [0.25] * 4])
    reference = Reference.from_probs(probs, n_bins=4)
    ln2, ln3, ln4 = math.log(2), math.log(3), math.log(4)
    np.testing.assert_allclose(
        reference.entropy_edges, [0.75 * ln2, (ln2 + ln3) / 2, ln3 + 0.25 * (ln4 - ln3)], rtol=1e-9
    )
    np.testing.assert_allclose(reference.entropy_freq(), [0.25] * 4)


def test_entropy_freq_is_uniform():
    freq = Reference.from_probs(constructed_probs()).entropy_freq()
    assert freq.shape == (10,)
    np.testing.assert_allclose(freq, 0.1)
    assert freq.sum() == pytest.approx(1.0)


def test_reference_json_round_trip(tmp_path):
    reference = Reference.from_probs(synthetic_probs(300, seed=3))
    path = tmp_path / "reference.json"
    path.write_text(reference.to_json())
    loaded = Reference.load(path)
    for name in ("class_freq", "confidence", "entropy_edges"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(reference, name))
        assert getattr(loaded, name).dtype == np.float64


def test_committed_reference_is_well_formed():
    reference = Reference.load(COMMITTED_REFERENCE)
    assert reference.class_freq.shape == (10,)
    assert reference.class_freq.sum() == pytest.approx(1.0)
    assert np.all(np.diff(reference.confidence) >= 0)
    assert np.all((reference.confidence >= 0.1) & (reference.confidence <= 1.0))
    assert reference.entropy_edges.shape == (9,)
    assert np.all(np.diff(reference.entropy_edges) >= 0)


# --- score --------------------------------------------------------------------------


def synthetic_probs(n: int, seed: int = 0) -> np.ndarray:
    """Confident softmax answers over 10 classes, balanced (row i is meant to be class i % 10)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (n, 10))
    logits[np.arange(n), np.arange(n) % 10] += 5.0
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sample():
    probs = synthetic_probs(500)
    return {
        "reference": Reference.from_probs(probs),
        "labels": probs.argmax(axis=1),
        "confidence": probs.max(axis=1),
        "entropy": entropy_of(probs),
    }


def test_score_identical_to_reference_no_alarm(sample):
    scores = score(sample["reference"], sample["labels"], sample["confidence"], sample["entropy"], window_size=500)
    assert scores.chi2_p == pytest.approx(1.0)
    assert scores.ks_p == pytest.approx(1.0)
    assert scores.psi_entropy == pytest.approx(0.0, abs=1e-12)  # 50 of 500 in every decile bin
    assert not scores.alarm and scores.reasons == ()
    assert scores.n == 500 and scores.fill == 1.0


def test_score_one_class_alarms_on_class_distribution(sample):
    n = 200
    labels = np.zeros(n, dtype=np.int64)
    scores = score(sample["reference"], labels, sample["confidence"][:n], sample["entropy"][:n], window_size=n)
    assert scores.alarm
    assert scores.chi2_p < defaults.DRIFT_P_ALARM
    assert len(scores.reasons) == 1 and "class distribution" in scores.reasons[0]
    assert scores.ks_p > defaults.DRIFT_P_ALARM  # confidences are the reference's own


def test_score_low_confidence_alarms_on_ks(sample):
    n = 200
    low = np.full(n, sample["reference"].confidence.min() / 2)  # below every reference confidence
    scores = score(sample["reference"], sample["labels"][:n], low, sample["entropy"][:n], window_size=n)
    assert scores.alarm
    assert scores.ks_p < defaults.DRIFT_P_ALARM
    assert len(scores.reasons) == 1 and "confidence distribution" in scores.reasons[0] and "KS" in scores.reasons[0]
    assert scores.chi2_p > defaults.DRIFT_P_ALARM


def test_score_high_entropy_alarms_on_psi(sample):
    n = 200
    high = np.full(n, sample["reference"].entropy_edges[-1] + 1.0)  # all in the top decile bin
    scores = score(sample["reference"], sample["labels"][:n], sample["confidence"][:n], high, window_size=n)
    expected = 9 * (EPS - 0.1) * math.log(EPS / 0.1) + (1 - 0.1) * math.log(1 / 0.1)
    assert scores.psi_entropy == pytest.approx(expected, rel=1e-9)
    assert scores.alarm and any(r.startswith("entropy PSI") for r in scores.reasons)


def test_score_chi2_p_value_two_classes():
    reference = Reference.from_probs(np.array([[0.8, 0.2], [0.2, 0.8]]))  # class_freq [0.5, 0.5]
    labels = np.array([0] * 7 + [1] * 3)
    scores = score(reference, labels, np.full(10, 0.8), np.full(10, 0.5), window_size=10)
    # (7 - 5)^2 / 5 + (3 - 5)^2 / 5 = 1.6 with one degree of freedom
    assert scores.chi2_p == pytest.approx(chi2_sf_1df(1.6), rel=1e-9)


def test_no_alarm_before_window_is_full(sample):
    window = 200
    conf, ent = sample["confidence"], sample["entropy"]
    for n, alarm in ((199, False), (200, True)):
        scores = score(sample["reference"], np.zeros(n, dtype=np.int64), conf[:n], ent[:n], window_size=window)
        assert scores.chi2_p < defaults.DRIFT_P_ALARM  # the statistics are computed either way
        assert scores.alarm is alarm
        assert scores.fill == n / window
    for n, alarm in ((99, False), (100, True)):
        labels = np.zeros(n, dtype=np.int64)
        scores = score(sample["reference"], labels, conf[:n], ent[:n], window_size=window, min_fill=0.5)
        assert scores.alarm is alarm


def test_empty_window_scores_neutral(sample):
    scores = DriftMonitor(sample["reference"], window_size=50).evaluate()
    assert (scores.n, scores.chi2_p, scores.ks_p, scores.psi_entropy, scores.alarm) == (0, 1.0, 1.0, 0.0, False)
    assert scores.to_dict()["reasons"] == []


def test_thresholds_are_passed_through(sample):
    n = 200
    labels = sample["labels"][:n]
    scores = score(sample["reference"], labels, sample["confidence"][:n], sample["entropy"][:n], window_size=n)
    assert not scores.alarm
    strict = score(
        sample["reference"], labels, sample["confidence"][:n], sample["entropy"][:n], window_size=n, p_alarm=1.1
    )
    assert strict.alarm and len(strict.reasons) == 2  # every p-value is below 1.1
    d = strict.to_dict()
    assert d["reasons"] == list(strict.reasons) and d["window_size"] == n


# --- DriftMonitor ---------------------------------------------------------------------

ROW = {0: [0.8, 0.2], 1: [0.2, 0.8]}


def two_class_reference() -> Reference:
    return Reference.from_probs(np.array([ROW[0], ROW[1]]))  # class_freq [0.5, 0.5]


def rows(labels) -> np.ndarray:
    return np.array([ROW[label] for label in labels], dtype=np.float32)


def test_monitor_scores_only_the_last_window():
    monitor = DriftMonitor(two_class_reference(), window_size=10)
    monitor.observe(rows([0] * 10))
    assert monitor.evaluate().chi2_p == pytest.approx(chi2_sf_1df(10.0), rel=1e-9)  # 10 vs 0: (5^2 + 5^2) / 5
    # 3 more zeros, then 5 ones and 5 zeros alternating, fed in batches of 3 (wraps mid-batch).
    stream = rows([0] * 3 + [1, 0] * 5)
    for start in range(0, len(stream), 3):
        monitor.observe(stream[start : start + 3])
    scores = monitor.evaluate()
    assert scores.n == 10 and monitor.observed_total == 23
    assert scores.chi2_p == pytest.approx(1.0)  # the last 10 are balanced; any other 10 are not
    # One row more: the last 10 are now 4 ones and 6 zeros -> statistic (1 + 1) / 5 = 0.4
    monitor.observe(rows([0]))
    assert monitor.evaluate().chi2_p == pytest.approx(chi2_sf_1df(0.4), rel=1e-9)
    assert monitor.observed_total == 24


def test_monitor_partial_window():
    monitor = DriftMonitor(two_class_reference(), window_size=10)
    monitor.observe(rows([0, 0, 1, 1]))
    scores = monitor.evaluate()
    assert scores.n == 4 and scores.fill == 0.4
    assert scores.chi2_p == pytest.approx(1.0) and not scores.alarm


def test_monitor_batch_larger_than_window_keeps_last_rows():
    monitor = DriftMonitor(two_class_reference(), window_size=10)
    monitor.observe(rows([0] * 15 + [1, 0] * 5))
    scores = monitor.evaluate()
    assert scores.n == 10
    assert scores.chi2_p == pytest.approx(1.0)  # only the balanced tail; the 15 zeros are gone


def test_monitor_batch_larger_than_window_counts_every_answer():
    monitor = DriftMonitor(two_class_reference(), window_size=10)
    monitor.observe(rows([0] * 25))
    assert monitor.observed_total == 25


def test_monitor_concurrent_observers():
    window, batch, batches = 64, 4, 400
    monitor = DriftMonitor(two_class_reference(), window_size=window)
    confidence = {0: 0.9, 1: 0.7}  # each thread's answers carry their own confidence
    batch_rows = {  # class 0: [0.9, 0.1]; class 1: [0.3, 0.7]
        label: np.tile(np.roll([confidence[label], 1 - confidence[label]], label), (batch, 1)) for label in (0, 1)
    }
    start = threading.Barrier(3)
    errors = []

    def observer(label):
        start.wait()
        for _ in range(batches):
            monitor.observe(batch_rows[label])

    def evaluator():
        start.wait()
        try:
            for _ in range(50):
                assert 0 <= monitor.evaluate().n <= window
        except Exception as exc:  # re-raised below: an assert in a thread would be lost
            errors.append(exc)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=observer, args=(label,)) for label in (0, 1)]
        threads.append(threading.Thread(target=evaluator))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old_interval)

    assert not errors, errors
    assert monitor.observed_total == 2 * batches * batch
    assert monitor.evaluate().n == window
    # Every slot holds one whole answer (label and confidence from the same row), and the
    # window is a run of whole 4-row batches: no batch was torn by the other thread.
    labels = monitor._labels
    np.testing.assert_allclose(monitor._confidence, np.where(labels == 0, 0.9, 0.7), rtol=1e-12)
    blocks = np.roll(labels, -monitor._next).reshape(-1, batch)
    assert np.all(blocks == blocks[:, :1])
