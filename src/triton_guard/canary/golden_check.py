"""The golden verdict: a model's answers held against its golden cases, and the check that says so.

`compare_case` compares one answer with one case (canary/goldens.py holds the
case format): floating-point outputs within their tolerance, every other
output identical, and whether the whole answer was bit-exact. `check_golden`
turns one model's comparisons into its `golden:<model>` check. The canary's
golden workers (canary/runner.py) compare each answer as it comes.
Plain Python (no Triton import).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from triton_guard.canary.goldens import (
    FLOAT_TYPES,
    ExpectedOutput,
    GoldenCase,
    GoldenError,
    canonical,
    datatype_of,
    outputs_hash,
    position_of,
)
from triton_guard.canary.report import CheckResult


@dataclass(frozen=True)
class OutputComparison:
    name: str
    ok: bool
    max_abs_diff: float | None  # None for exact (non-float) outputs and unusable answers
    tolerance: float
    reason: str


@dataclass(frozen=True)
class CaseComparison:
    case: str
    bit_exact: bool
    outputs: list[OutputComparison]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def reason(self) -> str:
        failed = [o.reason for o in self.outputs if not o.ok]
        if failed:
            return f"case '{self.case}': " + "; ".join(failed)
        if self.bit_exact:
            return f"case '{self.case}': bit-exact"
        diffs = ", ".join(f"{o.name} {o.max_abs_diff:.3g}" for o in self.outputs if o.max_abs_diff)
        return f"case '{self.case}': within tolerance, not bit-exact (max |d| {diffs or '0'})"


def compare_output(expected: ExpectedOutput, answer: np.ndarray | None) -> OutputComparison:
    name, want = expected.name, expected.value
    fail = lambda reason, diff=None: OutputComparison(name, False, diff, expected.tolerance, f"{name} {reason}")  # noqa: E731
    if answer is None:
        return fail("is missing from the answer")
    answer = np.asarray(answer)
    try:
        got_type = datatype_of(answer)
    except GoldenError:
        return fail(f"has dtype {answer.dtype}, expected {expected.datatype}")
    if got_type != expected.datatype:
        return fail(f"is {got_type}, expected {expected.datatype}")
    if tuple(answer.shape) != tuple(want.shape):
        return fail(f"has shape {list(answer.shape)}, expected {list(want.shape)}")
    if expected.datatype in FLOAT_TYPES:
        got = answer.astype(np.float64).reshape(-1)
        ref = want.astype(np.float64).reshape(-1)
        if not np.all(np.isfinite(got)):
            return fail("is not finite (NaN or inf)")
        if got.size == 0:
            return OutputComparison(name, True, 0.0, expected.tolerance, f"{name} empty, as recorded")
        diff = np.abs(got - ref)
        worst = int(np.argmax(diff - expected.tolerance * np.maximum(1.0, np.abs(ref))))
        max_abs = float(diff.max())
        allowed = expected.tolerance * max(1.0, abs(float(ref[worst])))
        if diff[worst] > allowed:
            return fail(
                f"differs by {diff[worst]:.3g} at {position_of(want.shape, worst)} "
                f"({got[worst]:.7g}, golden {ref[worst]:.7g}; tolerance {expected.tolerance:g})",
                max_abs,
            )
        return OutputComparison(name, True, max_abs, expected.tolerance, f"{name} within {expected.tolerance:g}")
    got = canonical(answer, got_type).reshape(-1)
    ref = canonical(want, expected.datatype).reshape(-1)
    differing = [i for i, (a, b) in enumerate(zip(got.tolist(), ref.tolist())) if a != b]
    if differing:
        first = differing[0]
        return fail(
            f"differs in {len(differing)} of {ref.size} values (first at {position_of(want.shape, first)}: "
            f"{got[first]!r}, golden {ref[first]!r})"
        )
    return OutputComparison(name, True, None, 0.0, f"{name} identical")


def compare_case(case: GoldenCase, device_class: str, answer: Mapping[str, np.ndarray]) -> CaseComparison:
    expected = case.expected[device_class]
    outputs = [compare_output(e, answer.get(n)) for n, e in expected.outputs.items()]
    try:
        bit_exact = outputs_hash({n: answer[n] for n in expected.outputs}) == expected.sha256
    except (KeyError, GoldenError):
        bit_exact = False
    return CaseComparison(case.name, bit_exact, outputs)


GOLDEN = "golden"  # a golden check is named golden:<model>
NO_GOLDENS_NOTE = (
    "no golden inference configured: no model has goldens "
    "(record some with `triton-guard goldens record`)"
)


def golden_check_name(model: str) -> str:
    return f"{GOLDEN}:{model}"


def check_golden(model: str, comparisons: list[CaseComparison] | None, error: str | None = None) -> CheckResult:
    """One model's golden cases: every case must give its recorded outputs."""
    name = golden_check_name(model)
    if comparisons is None:
        return CheckResult(name, False, None, "answer within deadline", error or "no answer")
    value = {
        c.case: {
            "bit_exact": c.bit_exact,
            "outputs": {o.name: {"ok": o.ok, "max_abs_diff": o.max_abs_diff} for o in c.outputs},
        }
        for c in comparisons
    }
    limit = {c.case: {o.name: o.tolerance for o in c.outputs} for c in comparisons}
    failed = [c for c in comparisons if not c.ok]
    shown = failed or comparisons
    return CheckResult(name, not failed, value, {"tolerance": limit}, "; ".join(c.reason for c in shown))


def check_no_goldens() -> CheckResult:
    """No model has goldens: nothing to compare, and the report says so."""
    return CheckResult(GOLDEN, True, None, None, NO_GOLDENS_NOTE)
