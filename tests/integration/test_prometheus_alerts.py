"""The shipped alert rules, evaluated by a real Prometheus against a failing server.

One `serve --chaos` tritonserver (the demo repository with short limits) and
one real Prometheus (Debian's `prometheus`, the package that brings promtool)
scraping its /metrics every second, both on 127.0.0.1. Prometheus loads
deploy/prometheus/triton-guard-alerts.yaml through a test overlay that only
shortens every `for:` to 1 s (expressions, labels and annotations are the
shipped ones). A hung classifier (`triton-guard chaos hang`) must make
TritonGuardBreakerOpen and TritonGuardCanaryFailing fire, read through
Prometheus' HTTP API, and clearing the fault must resolve both; a memory leak
(`triton-guard chaos leak`) the same for TritonGuardMemoryHeadroomTrend, and a
leak in one instance for TritonGuardInstanceMemoryLeak. How long each took is
printed as one JSON line (`pytest -s`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import wait_until
from tests.integration.conftest import SHORT_TREND_CANARY, call_pipeline, chaos, chaos_server
from triton_guard import metrics as catalogue
from triton_guard.server import Ports
from triton_guard_demo.digits import heldout_split, load_digits_uint8

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None:
    pytest.skip("prometheus not installed (Debian package `prometheus`)", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "triton-guard-alerts.yaml"
LOOPBACK = "127.0.0.1"
SCRAPE_S = 1
FOR = "1s"
# OPEN long enough between trial calls (the canary makes one every run) for
# `breaker_state == 1` to hold over consecutive evaluations.
RECOVERY_MS = 8000
FIRE_WITHIN_S = 30.0
RESOLVE_WITHIN_S = 40.0
QUIET_WITHIN_S = 60.0
WATCHED = ("TritonGuardBreakerOpen", "TritonGuardCanaryFailing")
LEAK_ALERT = "TritonGuardMemoryHeadroomTrend"


def overlay_rules(shipped: dict, for_: str) -> dict:
    """The shipped rule groups with every `for:` shortened; nothing else changed."""
    groups = json.loads(json.dumps(shipped))
    for group in groups["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = for_
    return groups


def test_overlay_changes_only_for():
    shipped = yaml.safe_load(ALERTS.read_text())
    overlaid = overlay_rules(shipped, FOR)
    flat = [r for g in shipped["groups"] for r in g["rules"]]
    for before, after in zip(flat, (r for g in overlaid["groups"] for r in g["rules"])):
        assert {k: v for k, v in after.items() if k != "for"} == {k: v for k, v in before.items() if k != "for"}
        assert ("for" in after) == ("for" in before) and after.get("for", FOR) == FOR


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    # The canary's leak trend: readiness fails only on a fast fall (floor within
    # 60 s), the alert on the floor within 15 min. Served on 127.0.0.1 (the default).
    with chaos_server(tmp_path_factory.mktemp("prometheus-triton"), canary=SHORT_TREND_CANARY,
                      timeout_ms=500, failure_threshold=3, recovery_ms=RECOVERY_MS) as server:
        yield server


class Prometheus:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str, **params) -> dict:
        url = f"{self.base_url}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.loads(response.read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def alert_states(self) -> dict[str, str]:
        """{alert name: pending|firing} for every active alert."""
        states: dict[str, str] = {}
        for alert in self.get("/api/v1/alerts")["alerts"]:
            name = alert["labels"]["alertname"]
            if states.get(name) != "firing":
                states[name] = alert["state"]
        return states


@pytest.fixture(scope="module")
def prometheus(triton, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = tmp / "triton-guard-alerts.yaml"
    rules.write_text(yaml.safe_dump(overlay_rules(yaml.safe_load(ALERTS.read_text()), FOR)))
    metrics_target = f"{LOOPBACK}:{triton.ports.metrics}"
    config = tmp / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
                "rule_files": [str(rules)],
                "scrape_configs": [{"job_name": "triton-guard", "static_configs": [{"targets": [metrics_target]}]}],
            }
        )
    )
    port = Ports.free().http
    log = open(tmp / "prometheus.log", "w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = Prometheus(f"http://{LOOPBACK}:{port}")

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited: {(tmp / 'prometheus.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{api.base_url}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(ready, 30, "prometheus ready")
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def heldout():
    _, _, images, _ = heldout_split(*load_digits_uint8())
    return images


def test_prometheus_loads_the_shipped_rules_and_scrapes_the_server(prometheus, triton, heldout):
    groups = prometheus.get("/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    shipped = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert loaded == shipped
    call_pipeline(triton, heldout[:1])  # the guard publishes its gauges once it has served a request

    def healthy() -> bool:
        up = prometheus.query('up{job="triton-guard"}')
        ready = prometheus.query(catalogue.CANARY_READY.name)
        state = prometheus.query(catalogue.BREAKER_STATE.name + '{model="classifier"}')
        return bool(up and up[0]["value"][1] == "1" and ready and ready[0]["value"][1] == "1" and state)

    wait_until(healthy, 60, "Prometheus seeing the target up, the canary ready and the breaker's gauge")
    assert not set(WATCHED) & set(prometheus.alert_states())


def test_a_hung_model_fires_breaker_open_and_canary_failing_then_both_resolve(prometheus, triton, heldout):
    timings: dict[str, float] = {}
    chaos(triton, "hang")
    started = time.monotonic()
    try:
        for _ in range(3):  # trip the breaker (the canary's own golden calls would too, slower)
            call_pipeline(triton, heldout[:1], client_timeout_s=10)
        fired: dict[str, float] = {}

        def all_fired() -> bool:
            states = prometheus.alert_states()
            for name in WATCHED:
                if states.get(name) == "firing" and name not in fired:
                    fired[name] = round(time.monotonic() - started, 2)
            return set(fired) == set(WATCHED)

        wait_until(all_fired, FIRE_WITHIN_S, f"{WATCHED} firing (fired so far: {fired})")
        timings.update({f"{name}_fired_after_s": t for name, t in fired.items()})
        firing = prometheus.get("/api/v1/alerts")["alerts"]
        breaker_alert = next(a for a in firing if a["labels"]["alertname"] == "TritonGuardBreakerOpen")
        assert breaker_alert["labels"]["model"] == "classifier"
        assert breaker_alert["labels"]["severity"] == "critical"
        assert "classifier" in breaker_alert["annotations"]["summary"]
        canary_alert = next(a for a in firing if a["labels"]["alertname"] == "TritonGuardCanaryFailing")
        # The description lists the failing checks through a PromQL query of its own.
        assert "breakers" in canary_alert["annotations"]["description"] or "golden" in canary_alert["annotations"]["description"]
    finally:
        chaos(triton, "clear")
    cleared = time.monotonic()
    resolved: dict[str, float] = {}

    def all_resolved() -> bool:
        call_pipeline(triton, heldout[:1])  # trial calls close the breaker after recovery_ms
        states = prometheus.alert_states()
        for name in WATCHED:
            if name not in states and name not in resolved:
                resolved[name] = round(time.monotonic() - cleared, 2)
        return set(resolved) == set(WATCHED)

    wait_until(all_resolved, RESOLVE_WITHIN_S, f"{WATCHED} resolved (so far: {resolved})")
    timings.update({f"{name}_resolved_after_clear_s": t for name, t in resolved.items()})
    print("\nprometheus-alerts timings " + json.dumps(timings))


def leak_fires_then_resolves(prometheus, triton, alert: str, leak: tuple[str, ...], check_firing, quiet_why: str = "") -> None:
    """`alert` quiet, then `chaos leak LEAK` until it fires (its firing alerts to `check_firing`), then clear until it resolves."""
    timings: dict[str, float] = {}
    quiet_from = time.monotonic()
    wait_until(lambda: alert not in prometheus.alert_states(), QUIET_WITHIN_S, f"{alert} inactive before the leak{quiet_why}")
    timings["quiet_before_the_leak_after_s"] = round(time.monotonic() - quiet_from, 2)
    chaos(triton, "leak", *leak)
    started = time.monotonic()
    try:
        wait_until(lambda: prometheus.alert_states().get(alert) == "firing", FIRE_WITHIN_S, f"{alert} firing")
        timings[f"{alert}_fired_after_s"] = round(time.monotonic() - started, 2)
        check_firing([a for a in prometheus.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == alert])
    finally:
        chaos(triton, "clear")
    cleared = time.monotonic()
    wait_until(lambda: alert not in prometheus.alert_states(), RESOLVE_WITHIN_S, f"{alert} resolved")
    timings[f"{alert}_resolved_after_clear_s"] = round(time.monotonic() - cleared, 2)
    print("\nprometheus-alerts timings " + json.dumps(timings))


def test_a_leak_fires_the_headroom_trend_alert_then_it_resolves(prometheus, triton):
    """100 MB/s against ~20 GB free: the floor projected within minutes, far inside the rule's 900 s."""

    def check(firing):
        assert float(firing[0]["value"]) < 900

    # Host memory is what the canary reads on this box: it must be quiet first
    # (other processes allocating ~25 MB/s would already look like a leak).
    leak_fires_then_resolves(prometheus, triton, LEAK_ALERT, ("--leak-mb-per-s", "100", "--leak-cap-mb", "1500"), check,
                             " (is something else on the machine eating memory?)")


INSTANCE_LEAK_ALERT = "TritonGuardInstanceMemoryLeak"


def test_a_leak_in_one_instance_fires_the_instance_alert_naming_it_then_it_resolves(prometheus, triton):
    """`chaos leak --instance 0`: the per-instance alert names the model and its instance (exported_instance)."""

    def check(firing):
        assert [(a["labels"]["model"], a["labels"]["exported_instance"]) for a in firing] == [("classifier", "classifier_0_0")]
        assert "classifier_0_0" in firing[0]["annotations"]["summary"] and float(firing[0]["value"]) < 900

    leak_fires_then_resolves(prometheus, triton, INSTANCE_LEAK_ALERT,
                             ("--instance", "0", "--leak-mb-per-s", "100", "--leak-cap-mb", "1500"), check)
