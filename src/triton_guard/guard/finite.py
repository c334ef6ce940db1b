"""Non-finite values in an upstream's floating-point outputs are a failure, not an answer.

A model that returns NaN (or inf) probabilities answers HTTP 200 with
garbage: argmax of NaN is 0, so clients get a confident wrong label. The
guard checks every floating-point output of a successful call and fails the
call naming the output. Used by every placement (backends/bls.py, and
`non_finite_in_batch` by the in-process guard); plain numpy, no Triton import.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# FailureClassifier recognises this phrase (failures.py).
NON_FINITE_PHRASE = "non-finite value(s)"


def non_finite_output(outputs: Mapping[str, np.ndarray]) -> str | None:
    """A one-line error for the first floating-point output holding NaN or inf, else None."""
    for name, array in outputs.items():
        if array.dtype.kind != "f" or array.size == 0:
            continue
        finite = np.isfinite(array)
        if not finite.all():  # no sum-based shortcut: a sum overflows (and warns) on large finite values
            bad = array.size - int(np.count_nonzero(finite))
            return f"output '{name}' holds {bad} {NON_FINITE_PHRASE} (NaN or inf) of {array.size}"
    return None


def non_finite_in_batch(answers: Sequence[Mapping[str, np.ndarray] | None]) -> str | None:
    """`non_finite_output` over one execute's answers (`answers[i]`: request i's outputs, None for an error answer).

    One check per output name over the whole batch, not one per request: a
    batch is answered or failed as a whole, and eight small checks cost three
    times one concatenated check.
    """
    by_name: dict[str, list[np.ndarray]] = {}
    for outputs in answers:
        if outputs:
            for name, array in outputs.items():
                if array.dtype.kind == "f" and array.size:
                    by_name.setdefault(name, []).append(array.reshape(-1))
    for name, arrays in by_name.items():
        problem = non_finite_output({name: arrays[0] if len(arrays) == 1 else np.concatenate(arrays)})
        if problem is not None:
            return problem
    return None
