"""triton_guard.drift.monitor: PSI, the reference, window scoring and the ring-buffer monitor.

Expected values are worked out by hand (or from closed forms: for one degree
of freedom the chi-squared survival function is erfc(sqrt(x / 2))), not by
calling the code under test.
"""

from __future__ import annotations

import json
import math
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.fakes import FakeClock
from triton_guard import defaults
from triton_guard.canary.checks import check_drift
from triton_guard.drift.monitor import (
    DriftMonitor, Reference, ValuesReference, build_reference, is_probe_parameters, load_reference,
    psi, reference_document, score)
from triton_guard.drift.record import ModelShape, RecordError, output_rows, record, request_batches
from triton_guard.drift.ring import RowRing
from triton_guard.drift.scorer import Scorer, write_off_state
from triton_guard.drift.state import judge, read_states, state_filename, write_state
from triton_guard.errors import DriftReferenceError
from triton_guard.guard.config import ConfigError, DriftConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED_REFERENCE = REPO_ROOT / "model_repository" / "classifier" / "drift" / "PROBS.json"
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
    assert scores.statistics["chi2_p"] == pytest.approx(1.0)
    assert scores.statistics["ks_p"] == pytest.approx(1.0)
    assert scores.statistics["psi_entropy"] == pytest.approx(0.0, abs=1e-12)  # 50 of 500 in every decile bin
    assert not scores.alarm and scores.reasons == ()
    assert scores.n == 500 and scores.fill == 1.0


def test_score_one_class_alarms_on_class_distribution(sample):
    n = 200
    labels = np.zeros(n, dtype=np.int64)
    scores = score(sample["reference"], labels, sample["confidence"][:n], sample["entropy"][:n], window_size=n)
    assert scores.alarm
    assert scores.statistics["chi2_p"] < defaults.DRIFT_P_ALARM
    assert len(scores.reasons) == 1 and "class distribution" in scores.reasons[0]
    assert scores.statistics["ks_p"] > defaults.DRIFT_P_ALARM  # confidences are the reference's own


def test_score_low_confidence_alarms_on_ks(sample):
    n = 200
    low = np.full(n, sample["reference"].confidence.min() / 2)  # below every reference confidence
    scores = score(sample["reference"], sample["labels"][:n], low, sample["entropy"][:n], window_size=n)
    assert scores.alarm
    assert scores.statistics["ks_p"] < defaults.DRIFT_P_ALARM
    assert len(scores.reasons) == 1 and "confidence distribution" in scores.reasons[0] and "KS" in scores.reasons[0]
    assert scores.statistics["chi2_p"] > defaults.DRIFT_P_ALARM


def test_score_high_entropy_alarms_on_psi(sample):
    n = 200
    high = np.full(n, sample["reference"].entropy_edges[-1] + 1.0)  # all in the top decile bin
    scores = score(sample["reference"], sample["labels"][:n], sample["confidence"][:n], high, window_size=n)
    expected = 9 * (EPS - 0.1) * math.log(EPS / 0.1) + (1 - 0.1) * math.log(1 / 0.1)
    assert scores.statistics["psi_entropy"] == pytest.approx(expected, rel=1e-9)
    assert scores.alarm and any(r.startswith("entropy PSI") for r in scores.reasons)


def test_score_chi2_p_value_two_classes():
    reference = Reference.from_probs(np.array([[0.8, 0.2], [0.2, 0.8]]))  # class_freq [0.5, 0.5]
    labels = np.array([0] * 7 + [1] * 3)
    scores = score(reference, labels, np.full(10, 0.8), np.full(10, 0.5), window_size=10)
    # (7 - 5)^2 / 5 + (3 - 5)^2 / 5 = 1.6 with one degree of freedom
    assert scores.statistics["chi2_p"] == pytest.approx(chi2_sf_1df(1.6), rel=1e-9)


def test_no_alarm_before_window_is_full(sample):
    window = 200
    conf, ent = sample["confidence"], sample["entropy"]
    for n, alarm in ((199, False), (200, True)):
        scores = score(sample["reference"], np.zeros(n, dtype=np.int64), conf[:n], ent[:n], window_size=window)
        assert scores.statistics["chi2_p"] < defaults.DRIFT_P_ALARM  # the statistics are computed either way
        assert scores.alarm is alarm
        assert scores.fill == n / window
    for n, alarm in ((99, False), (100, True)):
        labels = np.zeros(n, dtype=np.int64)
        scores = score(sample["reference"], labels, conf[:n], ent[:n], window_size=window, min_fill=0.5)
        assert scores.alarm is alarm


def test_empty_window_scores_neutral(sample):
    scores = DriftMonitor(sample["reference"], window_size=50).evaluate()
    assert scores.n == 0 and scores.statistics == {"chi2_p": 1.0, "ks_p": 1.0, "psi_entropy": 0.0}
    assert not scores.alarm
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
    assert monitor.evaluate().statistics["chi2_p"] == pytest.approx(chi2_sf_1df(10.0), rel=1e-9)  # 10 vs 0: (5^2 + 5^2) / 5
    # 3 more zeros, then 5 ones and 5 zeros alternating, fed in batches of 3 (wraps mid-batch).
    stream = rows([0] * 3 + [1, 0] * 5)
    for start in range(0, len(stream), 3):
        monitor.observe(stream[start : start + 3])
    scores = monitor.evaluate()
    assert scores.n == 10 and monitor.observed_total == 23
    assert scores.statistics["chi2_p"] == pytest.approx(1.0)  # the last 10 are balanced; any other 10 are not
    # One row more: the last 10 are now 4 ones and 6 zeros -> statistic (1 + 1) / 5 = 0.4
    monitor.observe(rows([0]))
    assert monitor.evaluate().statistics["chi2_p"] == pytest.approx(chi2_sf_1df(0.4), rel=1e-9)
    assert monitor.observed_total == 24


def test_monitor_partial_window():
    monitor = DriftMonitor(two_class_reference(), window_size=10)
    monitor.observe(rows([0, 0, 1, 1]))
    scores = monitor.evaluate()
    assert scores.n == 4 and scores.fill == 0.4
    assert scores.statistics["chi2_p"] == pytest.approx(1.0) and not scores.alarm


def test_monitor_batch_larger_than_window_keeps_last_rows():
    monitor = DriftMonitor(two_class_reference(), window_size=10)
    monitor.observe(rows([0] * 15 + [1, 0] * 5))
    scores = monitor.evaluate()
    assert scores.n == 10
    assert scores.statistics["chi2_p"] == pytest.approx(1.0)  # only the balanced tail; the 15 zeros are gone


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
    held, _ = monitor.ring.snapshot()  # slot order
    labels = held.argmax(axis=1)
    np.testing.assert_allclose(held.max(axis=1), np.where(labels == 0, 0.9, 0.7), rtol=1e-12)
    next_slot = (2 * batches * batch) % window
    blocks = np.roll(labels, -next_slot).reshape(-1, batch)
    assert np.all(blocks == blocks[:, :1])


# --- the values kind ---------------------------------------------------------------


def normal_rows(n: int, width: int, loc: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, scale, (n, width))


def test_values_reference_summarises_each_row_by_mean_and_spread():
    rows = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 10.0]])
    reference = ValuesReference.from_rows(rows, n_bins=2)
    assert reference.row_width == 2
    np.testing.assert_allclose(reference.mean, [2.0, 2.0, 5.0])  # sorted row means
    np.testing.assert_allclose(reference.spread, [0.0, 1.0, 5.0])  # sorted population std per row
    np.testing.assert_allclose(reference.mean_edges, [2.0])  # median of the row means


def test_values_same_distribution_no_alarm_shifted_mean_alarms():
    reference = ValuesReference.from_rows(normal_rows(1000, 4, seed=1))
    same = reference.score(normal_rows(200, 4, seed=2), window_size=200)
    assert not same.alarm and same.kind == "values"
    assert set(same.statistics) == {"ks_mean_p", "ks_spread_p", "psi_mean"}
    assert same.statistics["ks_mean_p"] > 1e-3
    shifted = reference.score(normal_rows(200, 4, loc=1.0, seed=3), window_size=200)
    assert shifted.alarm
    assert shifted.statistics["ks_mean_p"] < defaults.DRIFT_P_ALARM
    assert any(r.startswith("row mean distribution shifted (KS p=") for r in shifted.reasons)
    assert any(r.startswith("row mean PSI") for r in shifted.reasons)
    wider = reference.score(normal_rows(200, 4, scale=3.0, seed=4), window_size=200)
    assert wider.alarm and wider.statistics["ks_spread_p"] < defaults.DRIFT_P_ALARM


def test_values_one_element_rows_have_no_spread_statistic():
    reference = ValuesReference.from_rows(normal_rows(500, 1, seed=5))
    scores = reference.score(normal_rows(200, 1, loc=2.0, seed=6), window_size=200)
    assert scores.statistics["ks_spread_p"] == 1.0  # not computed: every spread is 0
    assert scores.alarm and not any("spread" in r for r in scores.reasons)


def test_rows_with_nan_are_left_out_of_the_statistics():
    reference = Reference.from_probs(synthetic_probs(300, seed=7))
    rows = synthetic_probs(200, seed=8)
    rows[:50] = np.nan
    scores = reference.score(rows, window_size=200)
    assert scores.n == 150
    assert all(math.isfinite(v) for v in scores.statistics.values())


def test_build_reference_refuses_what_does_not_fit_the_kind():
    with pytest.raises(DriftReferenceError, match=r"row 1 is not a probability distribution \(sum 2"):
        build_reference("probs", np.array([[0.5, 0.5], [1.0, 1.0]]))
    with pytest.raises(DriftReferenceError, match="at least 2 classes"):
        build_reference("probs", np.ones((5, 1)))
    with pytest.raises(DriftReferenceError, match="NaN or infinite"):
        build_reference("values", np.array([[1.0], [np.inf]]))
    with pytest.raises(DriftReferenceError, match="unknown kind 'logits'"):
        build_reference("logits", np.ones((3, 2)))
    assert isinstance(build_reference("values", np.array([[1.0, 1.0], [2.0, 3.0]])), ValuesReference)


def test_load_reference_reads_both_kinds_and_the_old_file(tmp_path):
    probs = Reference.from_probs(synthetic_probs(100, seed=9))
    values = ValuesReference.from_rows(normal_rows(100, 3))
    for reference in (probs, values):
        path = tmp_path / f"{reference.kind}.json"
        path.write_text(json.dumps(reference_document(reference, "m", "OUT", True, {"rows": 100})))
        loaded = load_reference(path)
        assert type(loaded) is type(reference)
        for name, value in reference.fields().items():
            np.testing.assert_array_equal(np.asarray(loaded.fields()[name]), np.asarray(value))
    old = tmp_path / "old.json"  # the demo's file before kinds: no "kind"
    old.write_text(json.dumps(probs.fields()))
    assert isinstance(load_reference(old), Reference)
    with pytest.raises(DriftReferenceError, match="a 'values' reference, not 'probs'"):
        Reference.load(tmp_path / "values.json")
    (tmp_path / "bad.json").write_text('{"kind": "probs", "class_freq": [1]}')
    with pytest.raises(DriftReferenceError, match="malformed 'probs' reference"):
        load_reference(tmp_path / "bad.json")
    with pytest.raises(DriftReferenceError, match="cannot read drift reference"):
        load_reference(tmp_path / "absent.json")


# --- the ring ----------------------------------------------------------------------


def test_shared_ring_is_one_window_for_two_handles(tmp_path):
    path = tmp_path / "r.ring"
    a, b = RowRing.shared(path, 2, 5), RowRing.shared(path, 2, 5)
    a.write(np.array([[1.0, 1.0], [2.0, 2.0]]))
    b.write(np.array([[3.0, 3.0], [4.0, 4.0], [5.0, 5.0], [6.0, 6.0]]))  # wraps: slot 0 now holds 6
    rows, total = a.snapshot()
    assert total == 6
    np.testing.assert_array_equal(rows[:, 0], [6.0, 2.0, 3.0, 4.0, 5.0])
    b.skip(3)
    assert a.skipped() == 3
    # Another shape (a new reference) starts a fresh window, never reads a mismatched one.
    c = RowRing.shared(path, 3, 5)
    assert c.snapshot()[1] == 0 and c.snapshot()[0].shape == (0, 3)


def _write_batches(path, label, batches):
    ring = RowRing.shared(path, 3, 64)
    for i in range(batches):
        ring.write(np.tile([label, i, label], (4, 1)).astype(np.float64))


def test_shared_ring_across_processes_keeps_whole_batches(tmp_path):
    import multiprocessing

    path = tmp_path / "r.ring"
    RowRing.shared(path, 3, 64)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_batches, args=(path, label, 300)) for label in (1.0, 2.0)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    rows, total = RowRing.shared(path, 3, 64).snapshot()
    assert total == 2 * 300 * 4
    np.testing.assert_array_equal(rows[:, 0], rows[:, 2])  # no row torn between writers
    # 64 slots = 16 whole batches of 4 identical rows, each from one writer, aligned on batch boundaries.
    blocks = rows.reshape(-1, 4, 3)
    assert np.all(blocks == blocks[:, :1, :])


# --- probes never enter the window ---------------------------------------------------------


def test_probe_parameter_is_recognised():
    assert is_probe_parameters('{"guard_probe":true}')
    assert not is_probe_parameters("{}")
    assert not is_probe_parameters('{"guard_probe":false}')
    assert not is_probe_parameters('{"other":"guard_probe"}')


def test_observe_answers_leaves_probe_rows_out():
    monitor = DriftMonitor(two_class_reference(), window_size=10)
    monitor.observe_answers(rows([0, 0, 0]), [True])  # a golden request alone
    assert monitor.observed_total == 0 and monitor.ring.skipped() == 3
    # A batch of three requests (2, 1, 2 rows), the middle one a probe.
    assert monitor.observe_answers(rows([1, 1, 0, 1, 1]), [False, True, False], lambda: [2, 1, 2])
    held, total = monitor.ring.snapshot()
    assert total == 4 and monitor.ring.skipped() == 4
    np.testing.assert_array_equal(held.argmax(axis=1), [1, 1, 1, 1])
    assert not monitor.observe_answers(rows([1, 1]), [False, True], lambda: [1, 2])  # sizes do not add up
    assert monitor.observed_total == 4
    # Unbatched: equal shares per request.
    assert monitor.observe_answers(rows([0, 1]), [True, False])
    assert monitor.ring.snapshot()[0][-1].argmax() == 1 and monitor.observed_total == 5


# --- guard parameters -------------------------------------------------------------------


def test_drift_config_from_guard_parameters():
    assert DriftConfig.from_parameters("m", {"timeout_ms": "5"}) is None
    config = DriftConfig.from_parameters("m", {"drift_output": "Y", "drift_window": "50", "drift_kind": "values"})
    assert (config.output, config.kind, config.window, config.reference) == ("Y", "values", 50, "m/drift/Y.json")
    assert config.thresholds() == {"p_alarm": defaults.DRIFT_P_ALARM, "psi_alarm": defaults.DRIFT_PSI_ALARM}
    assert DriftConfig.from_parameters("m", {"drift_output": "Y", "drift_reference": "/r.json"}).reference == "/r.json"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"drift_window": "50"}, "drift_window is given without drift_output"),
        ({"drift_output": "Y", "drift_kind": "logits"}, "drift_kind='logits' is invalid"),
        ({"drift_output": "Y", "drift_window": "9"}, "drift_window=9 is invalid"),
        ({"drift_output": "Y", "drift_window": "ten"}, "drift_window='ten' is invalid: expected an integer"),
        ({"drift_output": "Y", "drift_p_alarm": "1"}, "drift_p_alarm=1.0 is invalid"),
        ({"drift_output": "Y", "drift_psi_alarm": "-1"}, "drift_psi_alarm=-1.0 is invalid"),
        ({"drift_output": "Y", "drift_psi_alarm": "inf"}, "drift_psi_alarm=inf is invalid"),
    ],
)
def test_drift_config_refuses_bad_parameters(params, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        DriftConfig.from_parameters("m", params)


# --- per-model state and its age -------------------------------------------------------------


def two_class_rows(n: int, seed: int, only: int | None = None) -> np.ndarray:
    """Answers of a two-class model: confidence uniform in [0.55, 0.99], balanced classes unless `only`."""
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.55, 0.99, n)
    labels = rng.integers(0, 2, n) if only is None else np.full(n, only)
    probs = np.column_stack([confidence, 1 - confidence])
    return np.where(labels[:, None] == 0, probs, probs[:, ::-1])


TWO_CLASS_REFERENCE = Reference.from_probs(two_class_rows(5000, seed=0))
WINDOW = 200


def scored(tmp_path, model, probs, clock):
    monitor = DriftMonitor(TWO_CLASS_REFERENCE, window_size=WINDOW,
                           ring=RowRing.shared(tmp_path / f"{model}.ring", 2, WINDOW))
    monitor.observe(probs)
    return Scorer(model, "PROBS", monitor, str(tmp_path), clock=clock)


DRIFTING = two_class_rows(WINDOW, seed=1, only=0)
STEADY = two_class_rows(WINDOW, seed=2)


def test_scorer_writes_the_state_and_a_heartbeat(tmp_path):
    clock = FakeClock(100.0)
    scorer = scored(tmp_path, "m", DRIFTING, clock)
    assert scorer.step().alarm  # one class only against a 50/50 reference
    state = read_states(str(tmp_path))["m"]
    assert state["updated_at"] == 100.0 and state["scores"]["alarm"] and state["observed_total"] == WINDOW
    clock.advance(5)
    first = scorer.scores
    scorer.step()  # nothing new: the same scores, a fresh time stamp
    assert scorer.scores is first and read_states(str(tmp_path))["m"]["updated_at"] == 105.0
    scorer.monitor.observe(STEADY)
    assert not scorer.step().alarm  # a balanced window now: re-scored because new answers arrived


def test_one_scorer_per_model_and_a_successor_when_it_stops(tmp_path):
    clock = FakeClock(0.0)
    first, second = scored(tmp_path, "m", STEADY[:2], clock), scored(tmp_path, "m", STEADY[:2], clock)
    assert first.step() is not None
    assert second.step() is None  # the other instance scores this model
    first.close()
    assert second.step() is not None


def test_judge_ages_a_silent_monitor(tmp_path):
    clock = FakeClock(1000.0)
    scored(tmp_path, "m", DRIFTING, clock).step()
    state = read_states(str(tmp_path))["m"]
    fresh = judge("m", state, now=1000.0 + defaults.DRIFT_STALE_S)
    assert fresh.status == "alarm" and fresh.alarm and "class distribution shifted" in fresh.reason
    old = judge("m", state, now=1000.0 + defaults.DRIFT_STALE_S + 1)
    assert old.status == "stale" and not old.alarm and not old.value["alarm"]
    assert "silent for 31 s" in old.reason
    assert judge("m", {"scores": state["scores"]}, now=0).status == "stale"  # never stamped


def test_judge_filling_ok_and_off(tmp_path):
    clock = FakeClock(0.0)
    scored(tmp_path, "a", STEADY[:2], clock).step()
    scored(tmp_path, "b", STEADY, clock).step()
    write_off_state(str(tmp_path), "c", "PROBS", "no reference", clock=clock)
    states = read_states(str(tmp_path))
    assert sorted(states) == ["a", "b", "c"]
    assert judge("a", states["a"], 1.0).status == "filling"
    assert "2/200 answers" in judge("a", states["a"], 1.0).reason
    assert judge("b", states["b"], 1.0).status == "ok"
    off = judge("c", states["c"], 1.0)
    assert off.status == "off" and off.reason == "monitor off: no reference"


def test_state_files_of_unusual_model_names_stay_apart(tmp_path):
    assert state_filename("classifier") == "drift-classifier.json"
    assert state_filename("a/b") != state_filename("a_b")
    write_state(str(tmp_path), "a/b", {"updated_at": 1.0})
    write_state(str(tmp_path), "a_b", {"updated_at": 2.0})
    assert {m: s["updated_at"] for m, s in read_states(str(tmp_path)).items()} == {"a/b": 1.0, "a_b": 2.0}
    assert read_states(str(tmp_path / "absent")) == {}


def test_canary_check_per_model(tmp_path):
    clock = FakeClock(50.0)
    scored(tmp_path, "drifting", DRIFTING, clock).step()
    scored(tmp_path, "steady", STEADY, clock).step()
    states = read_states(str(tmp_path))
    reported = check_drift(states, now=51.0, fails_readiness=False)
    assert reported.ok and "reported only" in reported.reason
    assert reported.value["drifting"]["status"] == "alarm" and reported.value["steady"]["status"] == "ok"
    assert "drifting: class distribution shifted" in reported.reason and "steady: no drift (200/200" in reported.reason
    failing = check_drift(states, now=51.0, fails_readiness=True)
    assert not failing.ok
    # A dead monitor's last alarm does not count, even where drift fails readiness.
    assert check_drift(states, now=50.0 + defaults.DRIFT_STALE_S + 5, fails_readiness=True).ok
    empty = check_drift({}, now=0.0, fails_readiness=True)
    assert empty.ok and empty.value is None and "no monitored model" in empty.reason
    json.dumps(reported.value, allow_nan=False)  # the report stays JSON


# --- recording a reference ---------------------------------------------------------------


BATCHED = ModelShape("clf", 4, {"X": (3,)}, {"P": (2,)})
UNBATCHED = ModelShape("add", 0, {"A": (4,), "B": (4,)}, {"SUM": (4,)})


def test_request_batches_chunk_a_batched_model_by_max_batch_size():
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    batches = request_batches(BATCHED, {"X": x})
    assert [len(b["X"]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["X"] for b in batches]), x)
    with pytest.raises(RecordError, match="model 'clf' has no input 'Y' \\(inputs: X\\)"):
        request_batches(BATCHED, {"Y": x})


def test_request_batches_of_an_unbatched_model():
    a, b = np.zeros((6, 4), np.float32), np.ones((6, 4), np.float32)
    batches = request_batches(UNBATCHED, {"A": a, "B": b})
    assert len(batches) == 6 and batches[0]["A"].shape == (4,)  # one request per example
    assert len(request_batches(UNBATCHED, {"A": a[0], "B": b[0]})) == 1  # the file is one request


def test_record_builds_the_reference_from_the_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3)).astype(np.float32)
    calls = []

    def infer(batch):  # a fake model: softmax over (x0, x1)
        calls.append(len(batch["X"]))
        logits = batch["X"][:, :2].astype(np.float64)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    document = record(BATCHED, {"X": x}, "P", "probs", infer, source="x.npz")
    assert calls == [4] * 30
    assert (document["kind"], document["model"], document["output"], document["rows"]) == ("probs", "clf", "P", 120)
    assert document["batched"] is True and document["inputs"] == "x.npz"
    expected_freq = np.bincount(x[:, :2].argmax(axis=1), minlength=2) / 120
    np.testing.assert_allclose(document["class_freq"], expected_freq)
    with pytest.raises(RecordError, match="only 120 answers: a reference needs at least 200"):
        record(BATCHED, {"X": x}, "P", "probs", infer, min_rows=200)
    with pytest.raises(RecordError, match="output 'P': row 0 is not a probability distribution"):
        record(BATCHED, {"X": x}, "P", "probs", lambda batch: batch["X"][:, :2] + 5.0)
    with pytest.raises(RecordError, match="model 'clf' has no output 'Q' \\(outputs: P\\)"):
        record(BATCHED, {"X": x}, "Q", "probs", infer)


def test_record_values_of_an_unbatched_model():
    a = np.random.default_rng(1).normal(size=(150, 4)).astype(np.float32)
    document = record(UNBATCHED, {"A": a, "B": a}, "SUM", "values", lambda r: r["A"] + r["B"])
    reference = ValuesReference.from_fields(document)
    assert document["rows"] == 150 and document["batched"] is False and reference.row_width == 4
    np.testing.assert_allclose(reference.mean, np.sort((2 * a.astype(np.float64)).mean(axis=1)), rtol=1e-6)


def test_output_rows_refuse_bytes_and_ragged_rows():
    with pytest.raises(RecordError, match="BYTES"):
        output_rows(BATCHED, "P", [np.array([[b"a", b"b"]], dtype=object)])
    with pytest.raises(RecordError, match="rows of different sizes"):
        output_rows(UNBATCHED, "SUM", [np.zeros(4), np.zeros(5)])


def test_cli_refuses_a_model_not_in_the_repository(tmp_path, capsys):
    from triton_guard.cli import main

    code = main(["drift", "record", "--model", "nope", "--output", "P", "--kind", "probs",
                 "--inputs", str(tmp_path / "x.npz"), "--model-repository", str(tmp_path)])
    assert code == 1
    assert f"refused: model 'nope' is not in {tmp_path}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


# --- the Triton adapter, on a fake pb_utils ----------------------------------------------


class _Request:
    def __init__(self, rows: int, probe: bool = False) -> None:
        self._params = '{"guard_probe":true}' if probe else "{}"
        self._rows = rows

    def parameters(self) -> str:
        return self._params

    def inputs(self):
        import types

        return [types.SimpleNamespace(shape=lambda: [self._rows, 64])]


TAP_MODULES = ("drift_tap", "metrics")  # what importing the tap binds to the fake pb_utils


def _tap(module, path, upstream="clf"):
    return module.DriftTap.for_config(upstream, DriftConfig("PROBS", str(path)), None)


@pytest.fixture
def tap_module(monkeypatch, tmp_path):
    import types

    fake = types.ModuleType("triton_python_backend_utils")
    warnings = []
    fake.Logger = types.SimpleNamespace(log_warn=warnings.append, log_info=lambda *_: None)
    fake.MetricFamily = types.SimpleNamespace(GAUGE="GAUGE", COUNTER="COUNTER")  # nothing is published here
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    import triton_guard.backends as backends

    # Fresh imports bound to the fake, and the real ones back afterwards (sys.modules and the package's attributes).
    for name in TAP_MODULES:
        monkeypatch.delitem(sys.modules, f"triton_guard.backends.{name}", raising=False)
        monkeypatch.delattr(backends, name, raising=False)
    from triton_guard.backends import drift_tap

    monkeypatch.setattr(drift_tap, "default_state_dir", lambda: str(tmp_path / "state"))
    drift_tap.warnings = warnings
    yield drift_tap
    for name in TAP_MODULES:  # imported under the fake: not for later tests
        sys.modules.pop(f"triton_guard.backends.{name}", None)
        if getattr(backends, name, None) is not None and getattr(backends, name).pb_utils is fake:
            delattr(backends, name)


def test_tap_copies_client_rows_and_leaves_probe_rows_out(tap_module, tmp_path):
    path = tmp_path / "PROBS.json"
    path.write_text(json.dumps(reference_document(TWO_CLASS_REFERENCE, "clf", "PROBS", True)))
    tap = _tap(tap_module, path)
    try:
        tap.observe({"PROBS": STEADY[:3]}, [_Request(2), _Request(1, probe=True)])
        tap.observe({"PROBS": STEADY[:4]}, [_Request(4, probe=True)])  # a golden batch alone
        tap.observe({"PROBS": STEADY[:5]}, [_Request(5)])
        held, total = tap.monitor.ring.snapshot()
        assert total == 7 and tap.monitor.ring.skipped() == 5
        np.testing.assert_allclose(held, np.concatenate([STEADY[:2], STEADY[:5]]))
        tap.observe({"PROBS": np.zeros((2, 3))}, [_Request(2)])  # not the reference's rows of 2: refused, said once
        tap.observe({"PROBS": np.zeros((2, 3))}, [_Request(2)])
        assert tap.monitor.observed_total == 7
        assert len([w for w in tap_module.warnings if "does not fit" in w]) == 1
    finally:
        tap.close()
    assert not tap._thread.is_alive()  # joined at close


def test_tap_per_request_answers_of_the_guard_backend(tap_module, tmp_path):
    path = tmp_path / "PROBS.json"
    path.write_text(json.dumps(reference_document(TWO_CLASS_REFERENCE, "clf", "PROBS", True)))
    tap = _tap(tap_module, path)
    try:
        values = [{"PROBS": STEADY[:2]}, None, {"PROBS": STEADY[2:3]}, {"PROBS": STEADY[3:7]}]  # request 1 failed
        tap.observe_per_request(values, [_Request(2), _Request(1), _Request(1, probe=True), _Request(4)])
        held, total = tap.monitor.ring.snapshot()
        assert total == 6 and tap.monitor.ring.skipped() == 1
        np.testing.assert_allclose(held, np.concatenate([STEADY[:2], STEADY[3:7]]))
    finally:
        tap.close()


def test_tap_without_reference_is_off_then_takes_one_up(tap_module, tmp_path):
    path = tmp_path / "PROBS.json"
    tap = _tap(tap_module, path)
    try:
        tap.observe({"PROBS": STEADY[:3]}, [_Request(3)])  # answers flow, nothing observed
        state = read_states(str(tmp_path / "state"))["clf"]
        assert "cannot read drift reference" in state["error"] and "triton-guard drift record" in state["error"]
        path.write_text(json.dumps(reference_document(TWO_CLASS_REFERENCE, "clf", "PROBS", True)))
        tap._load_reference()  # what the tap's thread does every DRIFT_EVALUATE_S while off
        tap.observe({"PROBS": STEADY[:3]}, [_Request(3)])
        assert tap.monitor.observed_total == 3 and tap.error is None
    finally:
        tap.close()


def test_tap_refuses_a_relative_reference_without_a_repository(tap_module):
    with pytest.raises(ConfigError, match="drift_reference='clf/drift/PROBS.json' is relative"):
        tap_module.DriftTap.for_config("clf", DriftConfig.from_parameters("clf", {"drift_output": "PROBS"}), None)


def test_status_shows_one_drift_line_per_monitored_model(tmp_path):
    from triton_guard.canary.report import CanaryReport
    from triton_guard.status import render

    clock = FakeClock(10.0)
    scored(tmp_path, "drifting", DRIFTING, clock).step()
    scored(tmp_path, "steady", STEADY[:50], clock).step()
    check = check_drift(read_states(str(tmp_path)), now=11.0, fails_readiness=False)
    report = CanaryReport([check], 0.01, "cpu").to_dict()
    text = render({"url": "localhost:8001", "at": 0.0, "health": "ready", "reasons": [], "report": report,
                   "guards": {}, "metrics_error": None})
    lines = [line for line in text.splitlines() if line.startswith("Drift")]
    assert len(lines) == 2
    assert "drifting" in lines[0] and "PROBS (probs)" in lines[0] and "window 200/200" in lines[0] and "ALARM" in lines[0]
    assert "steady" in lines[1] and "window 50/200" in lines[1] and "FILLING" in lines[1]
