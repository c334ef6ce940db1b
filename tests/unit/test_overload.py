"""The canary's overload judge (triton_guard.canary.overload): injected time, fake counters, no server."""

from __future__ import annotations

import pytest

from triton_guard.canary.golden_check import golden_check_name
from triton_guard.canary.report import CheckResult
from triton_guard.canary.overload import (
    OVERLOAD,
    CapacityCache,
    Counters,
    GoldenMiss,
    MissKind,
    OverloadJudge,
    capacity_of,
    is_overloaded,
    load_limit,
    review,
)
from triton_guard import promtext

# Messages as clients and the canary get them from Triton 2.51 and the guard.
QUEUE_FULL = "in ensemble 'pipeline', [request id: <id_unknown>] Exceeds maximum queue size"
QUEUE_TIMEOUT = "in ensemble 'pipeline', Request timeout expired"
BULKHEAD = "model 'classifier' overloaded: 8 calls in flight (max_inflight=8)"
QUEUED_PAST_DEADLINE = "model 'classifier': deadline timeout_ms=10000 passed after 10234 ms of waiting before the guard"
STUB_DEAD = "in ensemble 'pipeline', Failed to process the request(s) for model 'classifier_0_0', message: Stub process 'classifier_0_0' is not healthy."
MODEL_TIMEOUT = "in ensemble 'pipeline', model 'classifier' did not answer within timeout_ms=10000"
BREAKER_OPEN = "Service temporarily unavailable: circuit breaker for model 'classifier' is OPEN; next trial call in 3.0 s"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def counters(at, answered=0, request_us=None, shed=None, model="pipeline"):
    return Counters(at, {model: answered}, request_us or {}, shed or {})


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def judge(clock):
    return OverloadJudge(evidence_s=1.0, grace_s=60.0, window_s=10.0, clock=clock)


@pytest.mark.parametrize("message, limit", [
    (QUEUE_FULL, "max_queue_size"),
    (QUEUE_TIMEOUT, "queue timeout"),
    (BULKHEAD, "max_inflight"),
    (QUEUED_PAST_DEADLINE, "timeout_ms while queued"),
])
def test_load_refusals_name_the_limit_hit(message, limit):
    assert load_limit(message) == limit


@pytest.mark.parametrize("message", [STUB_DEAD, MODEL_TIMEOUT, BREAKER_OPEN, "labels differ", ""])
def test_faults_are_not_load_refusals(message):
    assert load_limit(message) is None


def test_a_refusal_for_load_while_the_model_answers_and_was_right_recently_is_overload(judge, clock):
    judge.answered_right("pipeline")
    clock.now += 5
    verdict = judge.judge(GoldenMiss("pipeline", MissKind.REFUSED, QUEUE_FULL, 0.01),
                          counters(clock.now - 1.0, answered=100), counters(clock.now, answered=2661))
    assert verdict.overloaded
    assert "max_queue_size" in verdict.reason and "2561 requests in 1.0 s" in verdict.reason
    assert "5 s ago" in verdict.reason


def test_no_progress_while_refused_is_a_stuck_model_not_load(judge, clock):
    judge.answered_right("pipeline")
    verdict = judge.judge(GoldenMiss("pipeline", MissKind.REFUSED, QUEUE_FULL, 0.01),
                          counters(clock.now - 1.0, answered=500), counters(clock.now, answered=500))
    assert not verdict.overloaded
    assert verdict.reason.startswith(QUEUE_FULL) and "answered no request in 1.0 s" in verdict.reason


def test_a_late_golden_with_a_hung_model_fails_however_busy_the_queue(judge, clock):
    judge.answered_right("pipeline")
    miss = GoldenMiss("pipeline", MissKind.LATE, "no answer from 'pipeline' within the 2000 ms deadline", 2.0)
    verdict = judge.judge(miss, counters(clock.now - 2.0, answered=7), counters(clock.now, answered=7))
    assert not verdict.overloaded and "stuck" in verdict.reason


def test_a_fault_is_never_load_even_while_the_model_answers(judge, clock):
    judge.answered_right("pipeline")
    for message in (STUB_DEAD, MODEL_TIMEOUT, BREAKER_OPEN):
        verdict = judge.judge(GoldenMiss("pipeline", MissKind.REFUSED, message, 0.01),
                              counters(clock.now - 1, answered=0), counters(clock.now, answered=900))
        assert not verdict.overloaded and verdict.reason == message


def test_without_a_right_golden_yet_load_is_not_vouched_for(judge, clock):
    judge.answered_right("other")  # right answers count per model
    verdict = judge.judge(GoldenMiss("pipeline", MissKind.LATE, "no answer", 2.0),
                          counters(clock.now - 2, answered=0), counters(clock.now, answered=900))
    assert not verdict.overloaded and "none of its golden inferences has been answered right yet" in verdict.reason


def test_goldens_shed_for_longer_than_the_grace_stop_being_vouched_for(judge, clock):
    judge.answered_right("pipeline")
    clock.now += 61
    verdict = judge.judge(GoldenMiss("pipeline", MissKind.REFUSED, QUEUE_FULL, 0.01),
                          counters(clock.now - 1, answered=0), counters(clock.now, answered=900))
    assert not verdict.overloaded and "not been answered right for 61 s (overload_grace_s=60)" in verdict.reason


def test_a_golden_waiting_longer_than_the_grace_fails(judge, clock):
    judge.answered_right("pipeline")
    clock.now += 1
    verdict = judge.judge(GoldenMiss("pipeline", MissKind.PENDING, "still unanswered after 75.0 s", 75.0),
                          counters(clock.now - 1, answered=0), counters(clock.now, answered=900))
    assert not verdict.overloaded and "75 s" in verdict.reason


def test_a_golden_waiting_in_a_queue_is_overload_while_the_model_answers(judge, clock):
    judge.answered_right("pipeline")
    verdict = judge.judge(GoldenMiss("pipeline", MissKind.PENDING, "still unanswered after 3.1 s", 3.1),
                          counters(clock.now - 1, answered=0), counters(clock.now, answered=40))
    assert verdict.overloaded and "waiting in a queue for 3.1 s" in verdict.reason


def test_without_metrics_nothing_is_called_load(judge, clock):
    judge.answered_right("pipeline")
    verdict = judge.judge(GoldenMiss("pipeline", MissKind.REFUSED, QUEUE_FULL, 0.0), None, counters(clock.now, 9))
    assert not verdict.overloaded and "no server metrics" in verdict.reason


# --- crowding and shedding ---------------------------------------------------------


def test_a_model_holding_more_requests_than_one_round_of_its_instances_is_crowded(judge, clock):
    # Little's law: 5 s of looks in which classifier's answered requests added 450 s of request time
    # (90 requests inside at once on average) and preprocess's 100 s (20 at once).
    for second in range(6):
        judge.observe(counters(clock.now, request_us={"classifier": second * 90e6, "preprocess": second * 20e6}))
        clock.now += 1
    assert judge.inside() == {"classifier": pytest.approx(90), "preprocess": pytest.approx(20)}
    assert judge.crowded({"classifier": 64, "preprocess": 64}) == {
        "classifier": {"inside": 90.0, "capacity": 64, "window_s": 5.0}}
    check = judge.check([], {"classifier": 64, "preprocess": 64})
    assert is_overloaded(check) and "'classifier' held 90 requests at once over 5 s, more than one round of its " \
        "instances takes (64)" in check.reason
    assert not is_overloaded(judge.check([], {"classifier": 128}))  # two instances of 64 take it


def test_crowding_needs_a_second_of_looks_and_forgets_older_than_the_window(judge, clock):
    judge.observe(counters(clock.now, request_us={"classifier": 0}))
    judge.observe(counters(clock.now + 0.5, request_us={"classifier": 500e6}))
    assert judge.inside() == {}  # half a second of looks says nothing yet
    clock.now += 20
    judge.observe(counters(clock.now, request_us={"classifier": 501e6}))  # the old looks leave the window
    judge.observe(counters(clock.now + 2, request_us={"classifier": 502e6}))
    assert judge.inside() == {"classifier": pytest.approx(0.5)}


def test_a_hung_model_adds_no_request_time_and_a_reset_counter_gives_no_figure(judge, clock):
    judge.observe(counters(clock.now, request_us={"hung": 900e6, "reloaded": 900e6}))
    judge.observe(counters(clock.now + 3, request_us={"hung": 900e6, "reloaded": 5e6}))
    assert judge.inside() == {"hung": 0.0}


def test_shedding_counts_growth_between_looks_and_resets_at_each_check(judge, clock):
    judge.observe(counters(clock.now, shed={"classifier": 100}))  # the first look is the baseline
    judge.observe(counters(clock.now + 1, shed={"classifier": 130}))
    judge.observe(counters(clock.now + 2, shed={"classifier": 5}))  # reloaded: counter restarted, not shedding
    judge.observe(counters(clock.now + 3, shed={"classifier": 12}))
    check = judge.check([], {})
    assert check.ok and is_overloaded(check)
    assert check.value["shed"] == {"classifier": 37}
    assert "refused 37 requests for load" in check.reason
    assert not is_overloaded(judge.check([], {}))  # counted once


def test_the_overload_check_never_fails_readiness_and_says_why(judge, clock):
    quiet = judge.check([], {"classifier": 64})
    assert quiet == CheckResult(OVERLOAD, True, quiet.value, quiet.limit, "not overloaded")
    assert not is_overloaded(quiet)
    judge.answered_right("pipeline")
    verdict = judge.judge(GoldenMiss("pipeline", MissKind.REFUSED, QUEUE_FULL, 0.0),
                          counters(clock.now - 1, 0), counters(clock.now, 99))
    busy = judge.check([verdict], {})
    assert busy.ok and is_overloaded(busy)
    assert busy.reason.startswith("OVERLOADED: golden:pipeline overloaded: golden inference refused (max_queue_size)")
    assert busy.value["goldens"] == {"pipeline": verdict.reason}


def test_counters_are_read_from_tritons_metrics_and_the_guards_load_rejections():
    text = "\n".join([
        '# TYPE nv_inference_request_success counter',
        'nv_inference_request_success{model="pipeline",version="1"} 2561',
        'nv_inference_request_success{model="classifier",version="1"} 2561',
        '# TYPE nv_inference_request_duration_us counter',
        'nv_inference_request_duration_us{model="classifier",version="1"} 128000',
        '# TYPE triton_guard_rejections_total counter',
        'triton_guard_rejections_total{model="classifier",reason="overloaded"} 3',
        'triton_guard_rejections_total{model="classifier",reason="deadline"} 4',
        'triton_guard_rejections_total{model="classifier",reason="open"} 1000',
    ])
    c = Counters.from_samples(7.0, promtext.parse(text))
    assert c.at == 7.0
    assert c.answered == {"pipeline": 2561, "classifier": 2561}
    assert c.request_us == {"classifier": 128000}
    assert c.shed == {"classifier": 7}  # an open breaker is not load


def test_capacity_is_one_round_of_every_instance():
    assert capacity_of({"max_batch_size": 64, "instance_group": [{"count": 2}, {"count": 1}]}) == 192
    assert capacity_of({"max_batch_size": 0, "instance_group": [{"count": 3}]}) == 3
    assert capacity_of({}) == 1


def test_an_ensembles_capacity_is_its_narrowest_steps_and_configs_are_read_once_per_ttl(clock):
    configs = {
        "pipeline": {"max_batch_size": 64, "ensemble_scheduling": {"step": [{"model_name": "pre"}, {"model_name": "cls"}]}},
        "pre": {"max_batch_size": 64, "instance_group": [{"count": 2}]},
        "cls": {"max_batch_size": 64, "instance_group": [{"count": 1}]},
    }
    fetched = []

    def fetch(model):
        fetched.append(model)
        if model == "gone":
            raise OSError("model 'gone' is not loaded")
        return configs[model]

    cache = CapacityCache(fetch, ttl_s=60, clock=clock)
    assert cache.of(["pipeline", "pre", "gone"]) == {"pipeline": 64, "pre": 128}
    assert cache.of(["pipeline", "pre", "gone"]) == {"pipeline": 64, "pre": 128}
    assert fetched == ["gone", "pipeline", "pre", "cls", "pre"]  # once each (the steps for the ensemble)
    clock.now += 61
    cache.of(["pre"])
    assert fetched[-1] == "pre"


# --- review: the orchestration a run uses -------------------------------------------


def _results(*models):
    return {golden_check_name(m): CheckResult(golden_check_name(m), False, None, "answer within deadline", "x")
            for m in models}


def test_review_waits_for_the_evidence_window_then_looks_again(judge, clock):
    judge.answered_right("pipeline")
    before = counters(clock.now, answered=10)
    clock.now += 0.01  # the refusal came back at once
    looked = []

    def look():
        looked.append(clock.now)
        return counters(clock.now, answered=900)

    results = _results("pipeline")
    verdicts = review(judge, results, {"pipeline": GoldenMiss("pipeline", MissKind.REFUSED, QUEUE_FULL, 0.01)},
                      before, look, deadline=clock.now + 5, sleep=clock.sleep)
    assert looked == [pytest.approx(before.at + 1.0)]
    assert verdicts[0].overloaded
    assert results["golden:pipeline"].ok and results["golden:pipeline"].reason == verdicts[0].reason


def test_review_never_waits_past_the_deadline(judge, clock):
    judge.answered_right("pipeline")
    before = counters(clock.now, answered=10)
    deadline = clock.now + 0.3
    results = _results("pipeline")
    review(judge, results, {"pipeline": GoldenMiss("pipeline", MissKind.REFUSED, QUEUE_FULL, 0.0)},
           before, lambda: counters(clock.now, answered=11), deadline=deadline, sleep=clock.sleep)
    assert clock.now == pytest.approx(deadline)


def test_review_takes_no_second_look_for_faults(judge, clock):
    def look():
        raise AssertionError("no second look for a fault")

    results = _results("pipeline")
    verdicts = review(judge, results, {"pipeline": GoldenMiss("pipeline", MissKind.REFUSED, STUB_DEAD, 0.0)},
                      counters(clock.now, 1), look, deadline=clock.now + 2, sleep=clock.sleep)
    assert not verdicts[0].overloaded and not results["golden:pipeline"].ok
    assert results["golden:pipeline"].reason == STUB_DEAD


# --- the canary runner with the judge (a fake server, injected time) ---------------------

from tests.fakes import FakeClock  # noqa: E402
from tests.unit.test_canary import MODELS, FakeFacts, _record  # noqa: E402
from triton_guard.canary.checks import expected_runtime  # noqa: E402
from triton_guard.canary.config import CanaryConfig  # noqa: E402
from triton_guard.canary.golden_store import GoldenStore  # noqa: E402
from triton_guard.canary.runner import Canary  # noqa: E402
from triton_guard.pins import load_pins  # noqa: E402


class BusyServer(FakeFacts):
    """A server whose add_sub answers (or refuses for load) and whose counters move as the test says."""

    def __init__(self):
        super().__init__()
        self.refusal = None  # the error add_sub's golden gets, None: it answers
        self.answered = 0  # add_sub's success counter
        self.answering = True  # each look at /metrics finds 250 more answers
        self.inside = 0  # add_sub's requests inside at once: request time grows that fast
        self.clock, self.looked_at, self.request_us = None, 0.0, 0.0

    def infer(self, model, inputs, outputs):
        if model == "add_sub" and self.refusal:
            raise RuntimeError(self.refusal)
        return super().infer(model, inputs, outputs)

    def fetch_metrics(self, timeout_s):
        self.answered += 250 if self.answering else 0
        now = self.clock()
        self.request_us += self.inside * (now - self.looked_at) * 1e6
        self.looked_at = now
        return promtext.parse(
            "# TYPE nv_inference_request_success counter\n"
            f'nv_inference_request_success{{model="add_sub",version="1"}} {self.answered}\n'
            "# TYPE nv_inference_request_duration_us counter\n"
            f'nv_inference_request_duration_us{{model="add_sub",version="1"}} {self.request_us}\n'
            "# TYPE nv_inference_exec_count counter\n"
            f'nv_inference_exec_count{{model="add_sub",version="1"}} {self.answered}\n')


@pytest.fixture
def busy(tmp_path):
    _record(tmp_path, "add_sub")
    server, clock = BusyServer(), FakeClock(100.0)
    server.clock, server.looked_at = clock, clock.now
    canary = Canary(CanaryConfig(models=tuple(MODELS)), server, GoldenStore([tmp_path]),
                    expected_runtime(load_pins(), "cpu"), clock=clock, sleep=clock.advance)
    assert canary.run(canary.config).ready  # a right golden answer first
    yield server, clock, canary
    canary.close()


def _check(report, name):
    return next(c for c in report.checks if c.name == name)


def test_a_golden_shed_while_the_model_answers_leaves_the_probe_ready_and_reports_overload(busy):
    server, clock, canary = busy
    server.refusal = QUEUE_FULL
    started = clock.now
    report = canary.run(canary.config)
    assert report.ready
    golden = _check(report, "golden:add_sub")
    assert golden.ok and golden.reason.startswith("overloaded: golden inference refused (max_queue_size)")
    assert clock.now - started == pytest.approx(1.0)  # it watched the server for the evidence window
    assert is_overloaded(_check(report, OVERLOAD))
    assert report.to_dict()["ready"] is True


def test_a_golden_shed_while_nothing_answers_fails_within_the_run(busy):
    server, clock, canary = busy
    server.refusal, server.answering = QUEUE_FULL, False
    report = canary.run(canary.config)
    assert not report.ready
    assert [c.name for c in report.failed] == ["golden:add_sub"]
    assert "answered no request in 1.0 s: not load, the model is stuck" in report.failed[0].reason


def test_a_dead_stub_under_load_fails_at_once(busy):
    server, clock, canary = busy
    server.refusal = STUB_DEAD
    started = clock.now
    report = canary.run(canary.config)
    assert [c.name for c in report.failed] == ["golden:add_sub"]
    assert clock.now == started  # no evidence to wait for: a dead stub is not load


def test_a_crowded_model_is_reported_without_touching_readiness(busy):
    server, clock, canary = busy
    server.inside = 100  # more than one round of add_sub's instances (8 x 1, FakeFacts.model_config)
    for _ in range(3):
        canary.sample()
        clock.advance(1.0)
    report = canary.run(canary.config)
    assert report.ready
    overload_check = _check(report, OVERLOAD)
    assert overload_check.value["crowded"]["add_sub"]["capacity"] == 8
    assert "'add_sub' held 100 requests at once over " in overload_check.reason
