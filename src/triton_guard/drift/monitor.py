"""Output distribution monitor: is the model still answering like it used to?

A window of the model's last `window_size` answers (rows of one output) is
compared with a reference distribution recorded from representative inputs
(`triton-guard drift record`). Two kinds of output:

* ``probs``: class probabilities, one row per answer (e.g. softmax scores):
  - predicted-class distribution: Pearson's chi-squared goodness of fit
    against the reference class frequencies (catches a class-imbalanced
    stream or a model that collapsed onto a few classes);
  - confidence (max probability): two-sample Kolmogorov-Smirnov against the
    reference confidences (catches inputs the model is unsure about, e.g.
    noise or inverted images, even when the classes still look balanced);
  - entropy: Population Stability Index over the reference's decile bins
    (the industry-standard drift score; > 0.25 is the usual "major shift").
* ``values``: any real-valued output, each row summarised by its mean and
  its standard deviation (over the row's elements):
  - row mean and row spread: two-sample KS against the reference's;
  - row mean: PSI over the reference's decile bins.

An alarm needs a p-value below `p_alarm` or a PSI above `psi_alarm`, with a
full window. With three statistics over overlapping windows, p_alarm = 1e-4
keeps the measured false-alarm rate on clean traffic under 1% of windows
(scripts/eval_drift.py measures it). The statistics run beside the request
path: `DriftMonitor.observe` only copies rows into a ring buffer
(triton_guard.drift.ring).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from triton_guard import defaults
from triton_guard.drift.ring import RowRing
from triton_guard.errors import DriftReferenceError
from triton_guard.jsonfile import read_json

KINDS = ("probs", "values")
REFERENCE_FORMAT = 1
# The demo's old location (model_repository/canary/goldens/); references now live with their model.
REFERENCE_FILE = "reference.json"
_EPS = 1e-4  # smoothing for empty bins in PSI


def is_probe_parameters(parameters_json: str) -> bool:
    """True when a request's parameters (Triton's JSON text) carry the probe marker."""
    key = defaults.PROBE_PARAMETER
    return f'"{key}"' in parameters_json and bool(json.loads(parameters_json).get(key))


def confidence_and_entropy(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    clipped = np.clip(probs, 1e-12, 1.0)
    entropy = -(probs * np.log(clipped)).sum(axis=1)
    return confidence, entropy


def row_mean_and_spread(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.asarray(rows, dtype=np.float64)
    return rows.mean(axis=1), rows.std(axis=1)


def _finite_rows(rows: np.ndarray, width: int) -> np.ndarray:
    """Rows [n, width] as float64 without those holding NaN or inf (a broken answer is the goldens' business)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, width)
    return rows[np.isfinite(rows).all(axis=1)]


def _decile_edges(sample: np.ndarray, n_bins: int = 10) -> np.ndarray:
    return np.quantile(sample, np.linspace(0, 1, n_bins + 1)[1:-1])


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population Stability Index between two binned distributions (proportions)."""
    e = np.clip(expected, _EPS, None)
    a = np.clip(actual, _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def _psi_on_edges(edges: np.ndarray, sample: np.ndarray) -> float:
    counts = np.bincount(np.searchsorted(edges, sample), minlength=len(edges) + 1)
    return psi(np.full(len(edges) + 1, 1.0 / (len(edges) + 1)), counts / len(sample))


@dataclass(frozen=True)
class DriftScores:
    kind: str
    n: int  # answers in the window
    window_size: int
    statistics: dict  # name -> value: p-values end in _p, PSIs start with psi_
    alarm: bool
    reasons: tuple[str, ...]

    @property
    def fill(self) -> float:
        return self.n / self.window_size

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "n": self.n,
            "window_size": self.window_size,
            "statistics": dict(self.statistics),
            "alarm": self.alarm,
            "reasons": list(self.reasons),
        }


def _verdict(kind, n, window_size, statistics, p_texts, psi_texts, p_alarm, psi_alarm, min_fill) -> DriftScores:
    reasons = []
    if n and n >= min_fill * window_size:
        for name, text in p_texts.items():
            if statistics[name] < p_alarm:
                test = "chi-squared" if name.startswith("chi2") else "KS"
                reasons.append(f"{text} shifted ({test} p={statistics[name]:.2g} < {p_alarm:g})")
        for name, text in psi_texts.items():
            if statistics[name] > psi_alarm:
                reasons.append(f"{text} PSI {statistics[name]:.2f} > {psi_alarm:g}")
    return DriftScores(kind, n, window_size, statistics, bool(reasons), tuple(reasons))


@dataclass(frozen=True)
class Reference:
    """Reference of a class-probabilities output (kind ``probs``)."""

    class_freq: np.ndarray  # [n_classes], sums to 1
    confidence: np.ndarray  # the reference sample, sorted
    entropy_edges: np.ndarray  # inner decile edges of the reference entropy
    kind = "probs"

    @property
    def row_width(self) -> int:
        return len(self.class_freq)

    @classmethod
    def from_probs(cls, probs: np.ndarray, n_bins: int = 10) -> "Reference":
        probs = np.asarray(probs)
        labels = probs.argmax(axis=1)
        class_freq = np.bincount(labels, minlength=probs.shape[1]) / len(labels)
        confidence, entropy = confidence_and_entropy(probs)
        return cls(class_freq, np.sort(confidence), _decile_edges(entropy, n_bins))

    def entropy_freq(self) -> np.ndarray:
        """Reference mass per entropy bin: 1/n_bins each by construction (deciles)."""
        return np.full(len(self.entropy_edges) + 1, 1.0 / (len(self.entropy_edges) + 1))

    def fields(self) -> dict:
        return {
            "class_freq": self.class_freq.tolist(),
            "confidence": self.confidence.tolist(),
            "entropy_edges": self.entropy_edges.tolist(),
        }

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, **self.fields()})

    @classmethod
    def from_fields(cls, data: dict) -> "Reference":
        return cls(*(np.array(data[k], dtype=np.float64) for k in ("class_freq", "confidence", "entropy_edges")))

    @classmethod
    def load(cls, path: Path) -> "Reference":
        reference = load_reference(path)
        if not isinstance(reference, cls):
            raise DriftReferenceError(f"{path}: a '{reference.kind}' reference, not '{cls.kind}'")
        return reference

    def score(self, rows: np.ndarray, window_size: int, p_alarm=defaults.DRIFT_P_ALARM,
              psi_alarm=defaults.DRIFT_PSI_ALARM, min_fill=defaults.DRIFT_MIN_FILL) -> DriftScores:
        rows = _finite_rows(rows, self.row_width)
        confidence, entropy = confidence_and_entropy(rows) if len(rows) else (np.zeros(0), np.zeros(0))
        return score(self, rows.argmax(axis=1) if len(rows) else np.zeros(0, np.int64), confidence, entropy,
                     window_size, p_alarm, psi_alarm, min_fill)


def score(
    reference: Reference,
    labels: np.ndarray,
    confidence: np.ndarray,
    entropy: np.ndarray,
    window_size: int,
    p_alarm: float = defaults.DRIFT_P_ALARM,
    psi_alarm: float = defaults.DRIFT_PSI_ALARM,
    min_fill: float = defaults.DRIFT_MIN_FILL,
) -> DriftScores:
    """Compare one window of class-probability answers with the reference; no alarm before min_fill."""
    n = len(labels)
    n_classes = len(reference.class_freq)
    observed = np.bincount(labels, minlength=n_classes).astype(np.float64)
    expected = np.clip(reference.class_freq, _EPS, None)
    expected = expected / expected.sum() * n
    statistics = {
        "chi2_p": float(stats.chisquare(observed, expected).pvalue) if n else 1.0,
        "ks_p": float(stats.ks_2samp(confidence, reference.confidence).pvalue) if n else 1.0,
        "psi_entropy": _psi_on_edges(reference.entropy_edges, entropy) if n else 0.0,
    }
    return _verdict("probs", n, window_size, statistics,
                    {"chi2_p": "class distribution", "ks_p": "confidence distribution"},
                    {"psi_entropy": "entropy"}, p_alarm, psi_alarm, min_fill)


@dataclass(frozen=True)
class ValuesReference:
    """Reference of a real-valued output (kind ``values``): per-row mean and spread."""

    row_width: int
    mean: np.ndarray  # per-row means of the reference sample, sorted
    spread: np.ndarray  # per-row standard deviations, sorted
    mean_edges: np.ndarray  # inner decile edges of the row means
    kind = "values"

    @classmethod
    def from_rows(cls, rows: np.ndarray, n_bins: int = 10) -> "ValuesReference":
        rows = np.asarray(rows, dtype=np.float64)
        mean, spread = row_mean_and_spread(rows)
        return cls(rows.shape[1], np.sort(mean), np.sort(spread), _decile_edges(mean, n_bins))

    def fields(self) -> dict:
        return {"row_width": self.row_width, "mean": self.mean.tolist(), "spread": self.spread.tolist(),
                "mean_edges": self.mean_edges.tolist()}

    @classmethod
    def from_fields(cls, data: dict) -> "ValuesReference":
        return cls(int(data["row_width"]), *(np.array(data[k], dtype=np.float64) for k in ("mean", "spread", "mean_edges")))

    def score(self, rows: np.ndarray, window_size: int, p_alarm=defaults.DRIFT_P_ALARM,
              psi_alarm=defaults.DRIFT_PSI_ALARM, min_fill=defaults.DRIFT_MIN_FILL) -> DriftScores:
        rows = _finite_rows(rows, self.row_width)
        n = len(rows)
        statistics = {"ks_mean_p": 1.0, "ks_spread_p": 1.0, "psi_mean": 0.0}
        if n:
            mean, spread = row_mean_and_spread(rows)
            statistics["ks_mean_p"] = float(stats.ks_2samp(mean, self.mean).pvalue)
            # A one-element row has no spread: the statistic would only repeat zeros.
            if self.row_width > 1:
                statistics["ks_spread_p"] = float(stats.ks_2samp(spread, self.spread).pvalue)
            statistics["psi_mean"] = _psi_on_edges(self.mean_edges, mean)
        p_texts = {"ks_mean_p": "row mean distribution"}
        if self.row_width > 1:
            p_texts["ks_spread_p"] = "row spread distribution"
        return _verdict("values", n, window_size, statistics, p_texts, {"psi_mean": "row mean"},
                        p_alarm, psi_alarm, min_fill)


REFERENCE_KINDS = {"probs": Reference, "values": ValuesReference}


def build_reference(kind: str, rows: np.ndarray):
    """A reference of `kind` from output rows [n, width] (DriftReferenceError when they do not fit the kind)."""
    rows = np.asarray(rows, dtype=np.float64)
    if kind not in REFERENCE_KINDS:
        raise DriftReferenceError(f"unknown kind '{kind}': expected one of {', '.join(KINDS)}")
    if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] == 0:
        raise DriftReferenceError(f"expected rows [n, width] with n, width > 0, got shape {list(rows.shape)}")
    if not np.all(np.isfinite(rows)):
        raise DriftReferenceError("the outputs hold NaN or infinite values")
    if kind == "probs":
        if rows.shape[1] < 2:
            raise DriftReferenceError("class probabilities need at least 2 classes per row: use --kind values")
        sums = rows.sum(axis=1)
        bad = np.flatnonzero((rows.min(axis=1) < 0) | (np.abs(sums - 1.0) > 1e-3))
        if len(bad):
            raise DriftReferenceError(
                f"row {bad[0]} is not a probability distribution (sum {sums[bad[0]]:.4g}, min {rows[bad[0]].min():.4g}): "
                "use --kind values for other outputs")
        return Reference.from_probs(rows)
    return ValuesReference.from_rows(rows)


def reference_document(reference, model: str, output: str, batched: bool, extra: dict | None = None) -> dict:
    """The JSON document of a reference file (what `triton-guard drift record` writes)."""
    return {"format": REFERENCE_FORMAT, "kind": reference.kind, "model": model, "output": output,
            "batched": batched, **(extra or {}), **reference.fields()}


def load_reference(path: Path):
    """The reference in `path` (either kind; the old demo file without `kind` is a probs reference)."""
    path = Path(path)
    data = read_json(path, DriftReferenceError, f"drift reference {path}")
    kind = data.get("kind", "probs") if isinstance(data, dict) else None
    if kind not in REFERENCE_KINDS:
        raise DriftReferenceError(f"drift reference {path}: unknown kind {kind!r}")
    try:
        return REFERENCE_KINDS[kind].from_fields(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise DriftReferenceError(f"drift reference {path}: malformed '{kind}' reference ({exc!r})") from None


class DriftMonitor:
    """The last `window_size` answers in a ring buffer; `evaluate()` scores them.

    `observe` runs on the request path (one copy of the batch's rows);
    `evaluate` runs beside it (a background thread) or in an offline script.
    The ring is in memory by default; a shared one (RowRing on a file) lets
    every model instance of a server feed one window.
    """

    def __init__(self, reference, window_size: int = defaults.DRIFT_WINDOW, ring: RowRing | None = None) -> None:
        self.reference = reference
        self.window_size = window_size
        self.ring = ring if ring is not None else RowRing(reference.row_width, window_size)

    @property
    def observed_total(self) -> int:
        return self.ring.total()

    def observe(self, rows: np.ndarray) -> None:
        self.ring.write(np.asarray(rows).reshape(-1, self.reference.row_width))

    def observe_answers(self, rows: np.ndarray, probes: Sequence[bool],
                        batch_sizes: Callable[[], Sequence[int]] | None = None) -> bool:
        """Observe the rows of the requests that are not probes; count the probes' rows as skipped.

        `probes[i]`: request i carries the probe parameter. Rows follow the
        requests in order; `batch_sizes()` gives each request's row count
        (asked only for a batch that mixes probes and other requests; None:
        the rows are shared equally, as for an unbatched model). False when
        the row counts do not add up (nothing observed).
        """
        rows = np.asarray(rows).reshape(-1, self.reference.row_width)
        if not any(probes):
            self.ring.write(rows)
            return True
        if all(probes):
            self.ring.skip(len(rows))
            return True
        counts = list(batch_sizes()) if batch_sizes is not None else [len(rows) // len(probes)] * len(probes)
        if len(counts) != len(probes) or sum(counts) != len(rows):
            return False
        keep = np.repeat(np.logical_not(probes), counts)
        self.ring.write(rows[keep])
        self.ring.skip(int(len(rows) - keep.sum()))
        return True

    def evaluate(self, **thresholds) -> DriftScores:
        rows, _ = self.ring.snapshot()
        return self.reference.score(rows, self.window_size, **thresholds)
