"""Shared by every test: the API key of the session's servers and `wait_until`.

The integration modules' servers, fault hooks and command-line helpers are in
tests/integration/conftest.py.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from triton_guard import defaults

REPO_ROOT = Path(__file__).resolve().parents[1]
# One key for the session's servers (`serve` restricts its admin APIs): every
# LocalServer takes it from the environment, and so do the CLI processes tests start.
os.environ.setdefault(defaults.API_KEY_ENV, f"triton-guard-tests-{secrets.token_hex(12)}")


def wait_until(predicate, timeout_s: float, what: str):
    """Poll a real server's behaviour until `predicate()` is truthy (its value), or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")
