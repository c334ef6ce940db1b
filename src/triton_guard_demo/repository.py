"""The demo's model repository, and copies of it with other limits (tests, replay, benchmarks).

Only meaningful in a checkout: the repository is `model_repository/` at its root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from triton_guard.model_config import CONFIG_FILE, set_parameters

CHECKOUT_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = CHECKOUT_ROOT / "model_repository"


def fast_model_repository(tmp_path: Path, canary: dict | None = None, **guard_params) -> Path:
    """A copy of the demo repository with short limits, under `tmp_path`.

    fast_model_repository(tmp_path, timeout_ms=500, recovery_ms=1500): tests
    that trip the breaker then wait seconds, not the production 10 s / 30 s.
    `canary` replaces the canary's parameters the same way. A parameter the
    config does not list yet is added.
    """
    copy = tmp_path / "model_repository"
    shutil.copytree(MODEL_REPOSITORY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    if guard_params:
        # Every guard shares its upstream's breaker, so all get the same limits: the
        # in-process classifier (`pipeline`), and both guards of classifier_unguarded.
        for guard in ("classifier", "classifier_guard", "preprocess_guarded"):
            set_parameters(copy / guard / CONFIG_FILE, guard_params)
    if canary:
        set_parameters(copy / "canary" / CONFIG_FILE, canary)
    return copy
