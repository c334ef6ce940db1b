"""triton_guard.canary.leak_reload: the opt-in reload of a leaking model, once per cooldown, not ready until back."""

from __future__ import annotations

import json


from triton_guard.canary.growth import Growth
from triton_guard.canary.instances import SERVER_ROW, InstanceMemory
from triton_guard.canary.leak import InstanceVerdict
from triton_guard.canary.leak_reload import APPEAR_S, LeakReloader, side_reload
from triton_guard.guard.healer import RELOAD_PARAMETER

MB = 1 << 20


def row(model, instance, pid):
    return InstanceMemory(model, instance, pid, 500 * MB)


def blamed(model="classifier", instance="classifier_0_1", pid=4102):
    growth = Growth(10 * MB, 300.0, True, 900 * MB, 300)
    return InstanceVerdict(row(model, instance, pid), "host", 900 * MB, growth, 400.0)


ROWS = [row(SERVER_ROW, SERVER_ROW, 4000), row("classifier", "classifier_0_0", 4101), row("classifier", "classifier_0_1", 4102)]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def reloader(results, clock, **kwargs):
    asked, logged = [], []

    def reload(model, why):
        asked.append((model, why))
        return results.pop(0)

    r = LeakReloader(reload, cooldown_s=600, clock=clock, log=logged.append, run_in_thread=False, **kwargs)
    return r, asked, logged


def test_a_blamed_model_is_reloaded_logged_counted_and_held_until_its_new_instances_run():
    clock = Clock()
    r, asked, logged = reloader(["reloaded"], clock)
    assert r.consider([blamed()], ROWS, "host") == ["classifier"]
    assert asked == [("classifier", "its instance classifier_0_1 (pid 4102) leaks +600 MB/min, the host floor in 7 min")]
    assert logged[0].startswith("canary: reloading model 'classifier': its instance classifier_0_1 (pid 4102) leaks")
    assert logged[-1] == "canary: reload of model 'classifier' reloaded"
    assert r.counts == {"classifier": {"reloaded": 1}}
    # Reloaded, but the process table still shows the old stubs: not ready yet.
    held = r.holding(ROWS)
    assert list(held) == ["classifier"] and "waiting for its new instances" in held["classifier"]
    new_rows = ROWS[:1] + [row("classifier", "classifier_0_0", 4201), row("classifier", "classifier_0_1", 4202)]
    assert r.holding(new_rows) == {}


def test_while_the_reload_runs_the_model_is_held():
    clock = Clock()
    started = []

    def slow_reload(model, why):
        started.append(model)
        assert "classifier" in r.holding(ROWS)  # asked from inside the reload: still running
        return "reloaded"

    r = LeakReloader(slow_reload, cooldown_s=600, clock=clock, log=lambda line: None, run_in_thread=False)
    r.consider([blamed()], ROWS, "host")
    assert started == ["classifier"]


def test_once_per_cooldown_per_model():
    clock = Clock()
    r, asked, _ = reloader(["reloaded", "reloaded"], clock)
    r.consider([blamed()], ROWS, "host")
    r.holding([row("classifier", "classifier_0_1", 4300)])  # back
    clock.now += 599
    assert r.consider([blamed(pid=4300)], ROWS, "host") == []
    clock.now += 1
    assert r.consider([blamed(pid=4300)], ROWS, "host") == ["classifier"]
    assert len(asked) == 2


def test_the_canary_and_the_server_are_never_reloaded():
    clock = Clock()
    r, asked, _ = reloader([], clock)
    assert r.consider([blamed("canary", "canary_0_0", 4103), blamed(SERVER_ROW, SERVER_ROW, 4000)], ROWS, "host") == []
    assert asked == []


def test_a_failed_reload_is_counted_and_releases_the_hold():
    clock = Clock()
    r, _, logged = reloader(["failed"], clock)
    r.consider([blamed()], ROWS, "host")
    assert r.holding(ROWS) == {}
    assert r.counts == {"classifier": {"failed": 1}}
    assert logged[-1] == "canary: reload of model 'classifier' failed"


def test_a_reload_that_raises_counts_as_failed_and_says_why():
    clock = Clock()

    def broken(model, why):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    logged = []
    r = LeakReloader(broken, cooldown_s=600, clock=clock, log=logged.append, run_in_thread=False)
    r.consider([blamed()], ROWS, "host")
    assert r.counts == {"classifier": {"failed": 1}}
    assert "ConnectionRefusedError" in logged[1]


def test_new_instances_that_never_appear_stop_holding_after_a_while():
    clock = Clock()
    r, _, _ = reloader(["reloaded"], clock)
    r.consider([blamed()], ROWS, "host")
    clock.now += APPEAR_S - 1
    assert "classifier" in r.holding(ROWS)
    clock.now += 1
    assert r.holding(ROWS) == {}


def test_in_a_thread_the_caller_does_not_wait():
    clock = Clock()
    release = __import__("threading").Event()

    def reload(model, why):
        release.wait(10)
        return "reloaded"

    r = LeakReloader(reload, cooldown_s=600, clock=clock, log=lambda line: None)
    r.consider([blamed()], ROWS, "host")
    assert "reloading model 'classifier'" in r.holding(ROWS)["classifier"]
    release.set()
    assert r.wait(10)
    assert r.counts == {"classifier": {"reloaded": 1}}


def test_side_reload_reloads_through_the_repository_api_and_says_why(tmp_path):
    calls, logged = [], []

    def post(url, body, headers, timeout_s):
        calls.append((url, body, dict(headers)))
        if body is None:  # the model's config, to send back with a reload stamp
            return 200, json.dumps({"name": "classifier", "instance_group": [{"count": 2, "kind": "KIND_CPU"}]})
        return 200, ""

    reload = side_reload("http://127.0.0.1:8000", "key", str(tmp_path), 10.0, logged.append, post=post, clock=lambda: 50.0)
    assert reload("classifier", "its instance classifier_0_1 (pid 4102) leaks +600 MB/min") == "reloaded"
    assert [c[0] for c in calls] == ["http://127.0.0.1:8000/v2/models/classifier/config",
                                     "http://127.0.0.1:8000/v2/repository/models/classifier/load"]
    config = json.loads(json.loads(calls[1][1])["parameters"]["config"])
    assert RELOAD_PARAMETER in config["parameters"] and config["instance_group"][0]["count"] == 2
    assert calls[1][2]["triton-guard-key"] == "key"
    assert logged[0] == ("guard: upstream 'classifier' leaks: its instance classifier_0_1 (pid 4102) leaks +600 MB/min; "
                         "reloading it through http://127.0.0.1:8000/v2/repository/models/classifier/load")
    # Within min_interval_s of that reload (or of the dead-stub healer's), a second one is skipped.
    assert reload("classifier", "again") == "skipped"
