"""Output distribution monitor: is the model still answering like it used to?

Every answer the pipeline gives (its PROBS rows) goes into a sliding window
of the last `window_size` answers; every so often the window is compared with
a reference distribution computed from the held-out split (stored beside the
canary's goldens, `reference.json`, by scripts/make_goldens.py):

* predicted-class distribution: Pearson's chi-squared goodness of fit against
  the reference class frequencies (catches a class-imbalanced stream or a
  model that collapsed onto a few classes);
* confidence (max probability): two-sample Kolmogorov-Smirnov against the
  reference confidences (catches inputs the model is unsure about, e.g.
  noise or inverted images, even when the classes still look balanced);
* entropy of PROBS: Population Stability Index over the reference's decile
  bins (the industry-standard drift score; > 0.25 is the usual "major shift").

An alarm needs a p-value below `p_alarm` (chi-squared or KS) or a PSI above
`psi_alarm`. With three statistics over overlapping windows, p_alarm = 1e-4
keeps the measured false-alarm rate on clean traffic under 1% of windows
(scripts/eval_drift.py measures it). Computing the statistics is kept off
the request path: `observe` only copies a batch into ring buffers.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from triton_guard import defaults

REFERENCE_FILE = "reference.json"  # inside the canary's goldens folder
_EPS = 1e-4  # smoothing for empty bins in PSI


def confidence_and_entropy(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    clipped = np.clip(probs, 1e-12, 1.0)
    entropy = -(probs * np.log(clipped)).sum(axis=1)
    return confidence, entropy


@dataclass(frozen=True)
class Reference:
    class_freq: np.ndarray  # [n_classes], sums to 1
    confidence: np.ndarray  # the reference sample, sorted
    entropy_edges: np.ndarray  # inner decile edges of the reference entropy

    @classmethod
    def from_probs(cls, probs: np.ndarray, n_bins: int = 10) -> "Reference":
        probs = np.asarray(probs)
        labels = probs.argmax(axis=1)
        n_classes = probs.shape[1]
        class_freq = np.bincount(labels, minlength=n_classes) / len(labels)
        confidence, entropy = confidence_and_entropy(probs)
        edges = np.quantile(entropy, np.linspace(0, 1, n_bins + 1)[1:-1])
        return cls(class_freq, np.sort(confidence), edges)

    def entropy_freq(self) -> np.ndarray:
        """Reference mass per entropy bin: 1/n_bins each by construction (deciles)."""
        return np.full(len(self.entropy_edges) + 1, 1.0 / (len(self.entropy_edges) + 1))

    def to_json(self) -> str:
        return json.dumps(
            {
                "class_freq": self.class_freq.tolist(),
                "confidence": self.confidence.tolist(),
                "entropy_edges": self.entropy_edges.tolist(),
            }
        )

    @classmethod
    def load(cls, path: Path) -> "Reference":
        data = json.loads(Path(path).read_text())
        return cls(
            np.array(data["class_freq"], dtype=np.float64),
            np.array(data["confidence"], dtype=np.float64),
            np.array(data["entropy_edges"], dtype=np.float64),
        )


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population Stability Index between two binned distributions (proportions)."""
    e = np.clip(expected, _EPS, None)
    a = np.clip(actual, _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftScores:
    n: int  # answers in the window
    window_size: int
    chi2_p: float
    ks_p: float
    psi_entropy: float
    alarm: bool
    reasons: tuple[str, ...]

    @property
    def fill(self) -> float:
        return self.n / self.window_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        return d


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
    """Compare one window of answers with the reference; no alarm before min_fill."""
    n = len(labels)
    n_classes = len(reference.class_freq)
    observed = np.bincount(labels, minlength=n_classes).astype(np.float64)
    expected = np.clip(reference.class_freq, _EPS, None)
    expected = expected / expected.sum() * n
    chi2_p = float(stats.chisquare(observed, expected).pvalue) if n else 1.0
    ks_p = float(stats.ks_2samp(confidence, reference.confidence).pvalue) if n else 1.0
    counts = np.bincount(np.searchsorted(reference.entropy_edges, entropy), minlength=len(reference.entropy_edges) + 1)
    psi_entropy = psi(reference.entropy_freq(), counts / n) if n else 0.0
    reasons = []
    if n >= min_fill * window_size:
        if chi2_p < p_alarm:
            reasons.append(f"class distribution shifted (chi-squared p={chi2_p:.2g} < {p_alarm:g})")
        if ks_p < p_alarm:
            reasons.append(f"confidence distribution shifted (KS p={ks_p:.2g} < {p_alarm:g})")
        if psi_entropy > psi_alarm:
            reasons.append(f"entropy PSI {psi_entropy:.2f} > {psi_alarm:g}")
    return DriftScores(n, window_size, chi2_p, ks_p, psi_entropy, bool(reasons), tuple(reasons))


class DriftMonitor:
    """The last `window_size` answers in ring buffers; `evaluate()` scores them.

    `observe` runs on the request path (a few numpy copies per batch);
    `evaluate` runs beside it (a background thread) or in an offline script.
    """

    def __init__(self, reference: Reference, window_size: int = defaults.DRIFT_WINDOW) -> None:
        self.reference = reference
        self.window_size = window_size
        self._labels = np.zeros(window_size, dtype=np.int64)
        self._confidence = np.zeros(window_size)
        self._entropy = np.zeros(window_size)
        self._next = 0
        self._count = 0
        self.observed_total = 0
        self._lock = threading.Lock()

    def observe(self, probs: np.ndarray) -> None:
        probs = np.asarray(probs)
        answers = len(probs)
        probs = probs[-self.window_size :]  # older rows of a huge batch would be overwritten anyway
        labels = probs.argmax(axis=1)
        confidence, entropy = confidence_and_entropy(probs)
        k = len(probs)
        with self._lock:
            idx = (self._next + np.arange(k)) % self.window_size
            self._labels[idx] = labels
            self._confidence[idx] = confidence
            self._entropy[idx] = entropy
            self._next = (self._next + k) % self.window_size
            self._count = min(self._count + k, self.window_size)
            self.observed_total += answers

    def evaluate(self, **thresholds) -> DriftScores:
        with self._lock:
            n = self._count
            labels, confidence, entropy = self._labels[:n].copy(), self._confidence[:n].copy(), self._entropy[:n].copy()
        return score(self.reference, labels, confidence, entropy, self.window_size, **thresholds)
