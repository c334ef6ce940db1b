"""A plain `pip install` of the project into a fresh venv serves a guarded foreign repository.

Runs scripts/check_fresh_install.py as a user would (its own interpreter,
no PYTHONPATH): fresh venv, non-editable install (no torch), then from a
directory outside the checkout `serve` with no repository refuses, `guard`
writes, `serve --model-repository` answers right through the guard and
the rerouted ensemble, SIGTERM stops it. Measured on a 2-core machine
shared with other test runs: 99 s (83 s of it pip, about 43 s of CPU), and
237 s at load average 20.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_fresh_install.py"


def test_fresh_venv_install_serves_a_guarded_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, env=env
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    (report,) = tmp_path.glob("*/report.json")
    steps = {s["step"]: s for s in json.loads(report.read_text())["steps"]}
    assert all(s["ok"] for s in steps.values())
    assert "no model repository" in steps["serve without a repository"]["output"]
    assert {"infer add_sub_guard", "infer add_then_scale", "serve stops on SIGTERM"} <= set(steps)
