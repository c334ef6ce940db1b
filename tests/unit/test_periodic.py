"""triton_guard.periodic: one round of the thread beside a request path (run directly, no thread, no sleep)."""

from __future__ import annotations

from triton_guard.periodic import Periodic


def flaky(outcomes):
    """work() that raises RuntimeError(outcome) for each string outcome, returns for None."""
    it = iter(outcomes)

    def work():
        outcome = next(it)
        if outcome is not None:
            raise RuntimeError(outcome)

    return work


def test_a_failing_round_is_reported_every_time_and_never_raised():
    reports = []
    rounds = Periodic("scorer", 1.0, flaky(["boom", "boom", None]), report=reports.append)
    for _ in range(3):
        rounds.round()
    assert reports == ["scorer: RuntimeError: boom", "scorer: RuntimeError: boom"]


def test_without_repeats_a_failure_is_reported_once_until_it_changes_or_a_round_succeeds():
    reports = []
    outcomes = ["boom", "boom", "disk full", None, "disk full"]
    rounds = Periodic("reporter", 1.0, flaky(outcomes), report=reports.append, repeat_reports=False)
    for _ in outcomes:
        rounds.round()
    assert reports == ["reporter: RuntimeError: boom", "reporter: RuntimeError: disk full",
                       "reporter: RuntimeError: disk full"]


def test_a_round_that_may_not_run_does_no_work():
    calls = []
    allowed = [False]
    rounds = Periodic("prober", 1.0, lambda: calls.append(1), may_run=lambda: allowed[0])
    rounds.round()
    allowed[0] = True
    rounds.round()
    assert calls == [1]


def test_stop_before_start_returns_at_once():
    rounds = Periodic("idle", 3600.0, lambda: None)
    rounds.stop(join_s=5.0)  # never started: nothing to join
    assert not rounds.is_alive()
