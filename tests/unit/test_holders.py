"""Which guard models run a breaker now: a lock held for as long as a guard process lives."""

from __future__ import annotations

import subprocess
import sys

from triton_guard.guard.holders import Holding, is_held

HOLD_AND_WAIT = """
import sys
from triton_guard.guard.holders import Holding
Holding(sys.argv[1], "classifier", "classifier_guard")
print("holding", flush=True)
sys.stdin.read()  # until the test closes it
"""


def test_no_file_says_nothing_and_a_file_nobody_holds_is_not_held(tmp_path):
    assert is_held(tmp_path, "classifier", "classifier_guard") is None  # e.g. the directory was rebuilt
    Holding(tmp_path, "classifier", "classifier_guard").release()
    assert is_held(tmp_path, "classifier", "classifier_guard") is False


def test_held_by_every_instance_until_the_last_lets_go(tmp_path):
    first, second = Holding(tmp_path, "classifier", "classifier_guard"), Holding(tmp_path, "classifier", "classifier_guard")
    assert is_held(tmp_path, "classifier", "classifier_guard")
    assert is_held(tmp_path, "classifier", "preprocess_guarded") is None  # per model
    assert is_held(tmp_path, "preprocess", "classifier_guard") is None  # and per breaker
    first.release()
    assert is_held(tmp_path, "classifier", "classifier_guard")
    second.release()
    second.release()  # twice: nothing more to let go of
    assert is_held(tmp_path, "classifier", "classifier_guard") is False


def test_a_process_that_ends_lets_go_however_it_ends(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", HOLD_AND_WAIT, str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "holding\n"
        assert is_held(tmp_path, "classifier", "classifier_guard")
        child.kill()  # no release, no finalize: the kernel lets go
        child.wait(timeout=10)
        assert is_held(tmp_path, "classifier", "classifier_guard") is False
    finally:
        child.kill()
