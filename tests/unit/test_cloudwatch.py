"""deploy/cloudwatch/, checked offline: the CloudWatch agent's scrape config and its EMF metric declarations.

Every metric the agent is told to turn into a CloudWatch metric must be in
the catalogue (triton_guard.metrics) and carry every dimension it is given;
the scrape config must select the pods of deploy/kubernetes/deployment.yaml
and pass promtool. tests/integration/test_observability_live.py checks the
same metrics against a real server's /metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy_helpers import DEPLOYMENT, REPO_ROOT, load_one, server_container
from triton_guard import metrics as catalogue

CLOUDWATCH_DIR = REPO_ROOT / "deploy" / "cloudwatch"
SCRAPE_CONFIG = CLOUDWATCH_DIR / "prometheus.yaml"
AGENT_CONFIG = CLOUDWATCH_DIR / "cwagentconfig.json"
# Added by the agent itself on EKS (Container Insights), not by the scrape.
AGENT_DIMENSIONS = frozenset({"ClusterName"})
# What the issue asked to reach CloudWatch: breaker state, rejections, canary
# readiness, memory headroom, the drift alarm.
REQUIRED = {
    catalogue.BREAKER_STATE.name,
    catalogue.REJECTIONS.name,
    catalogue.CANARY_READY.name,
    catalogue.MEMORY_FREE_BYTES.name,
    catalogue.MEMORY_FLOOR_BYTES.name,
    catalogue.MEMORY_SECONDS_TO_FLOOR.name,
    catalogue.DRIFT_ALARM.name,
}
# The units CloudWatch accepts (PutMetricData's StandardUnit).
CLOUDWATCH_UNITS = set(
    "Seconds Microseconds Milliseconds Bytes Kilobytes Megabytes Gigabytes Terabytes Bits Kilobits Megabits "
    "Gigabits Terabits Percent Count Bytes/Second Kilobytes/Second Megabytes/Second Gigabytes/Second "
    "Terabytes/Second Bits/Second Kilobits/Second Megabits/Second Gigabits/Second Terabits/Second "
    "Count/Second None".split()
)


def scrape_config() -> dict:
    return yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))


def agent_config() -> dict:
    return json.loads(AGENT_CONFIG.read_text(encoding="utf-8"))


def emf_processor(config: dict | None = None) -> dict:
    return (config or agent_config())["logs"]["metrics_collected"]["prometheus"]["emf_processor"]


def declarations() -> list[dict]:
    return emf_processor()["metric_declaration"]


def selected_series(declaration: dict, names) -> set[str]:
    """The sample names a declaration's metric_selectors select (the agent matches regexes on the name)."""
    return {n for n in names if any(re.search(s, n) for s in declaration["metric_selectors"])}


def all_series_names() -> set[str]:
    return {n for m in catalogue.CATALOGUE.values() for n in (m.name, *m.series_names)}


def declared_metrics() -> set[str]:
    """Every catalogue family some declaration turns into a CloudWatch metric."""
    return {catalogue.family_of(n).name for d in declarations() for n in selected_series(d, all_series_names())}


def relabel_target_labels() -> set[str]:
    job = _job()
    return {r["target_label"] for r in job["relabel_configs"] if "target_label" in r}


def _job() -> dict:
    jobs = scrape_config()["scrape_configs"]
    assert len(jobs) == 1
    return jobs[0]


# --- the agent config -------------------------------------------------------------


def test_agent_config_reads_the_scrape_config_beside_it():
    prometheus = agent_config()["logs"]["metrics_collected"]["prometheus"]
    # The path the agent's EKS manifest mounts the `prometheus-config` ConfigMap at.
    assert prometheus["prometheus_config_path"] == "/etc/prometheusconfig/" + SCRAPE_CONFIG.name
    assert emf_processor()["metric_namespace"] and emf_processor()["metric_declaration_dedup"] is True


def test_every_declaration_selects_only_catalogue_metrics():
    names = all_series_names()
    for declaration in declarations():
        for selector in declaration["metric_selectors"]:
            re.compile(selector)
            assert selector.startswith("^triton_guard_") and selector.endswith("$"), selector
            assert selected_series({"metric_selectors": [selector]}, names), f"{selector} selects nothing in the catalogue"
        # Triton's own names never match (they are dropped by the scrape anyway).
        assert not selected_series(declaration, {"nv_inference_count", "nv_gpu_memory_used_bytes", "up"})


def test_the_asked_for_metrics_reach_cloudwatch():
    assert REQUIRED <= declared_metrics()


def test_every_dimension_is_a_label_of_every_metric_it_is_given_to():
    provided = AGENT_DIMENSIONS | relabel_target_labels()
    for declaration in declarations():
        for name in selected_series(declaration, all_series_names()):
            labels = set(catalogue.family_of(name).labels)
            for dimensions in declaration["dimensions"]:
                assert len(dimensions) == len(set(dimensions)) <= 30, dimensions  # CloudWatch allows 30
                missing = set(dimensions) - labels - provided
                assert not missing, f"{name}: dimension(s) {sorted(missing)} not on the metric"


def test_open_ended_labels_are_never_a_dimension_by_accident():
    """Dimensions multiply CloudWatch metrics: only labels with listed values, plus model (one per guard)."""
    for declaration in declarations():
        for name in selected_series(declaration, all_series_names()):
            metric = catalogue.family_of(name)
            for dimensions in declaration["dimensions"]:
                for dimension in set(dimensions) & set(metric.labels):
                    assert dimension == "model" or metric.allowed(dimension) is not None, (name, dimension)


def test_declarations_match_the_scrape_job():
    job = _job()["job_name"]
    for declaration in declarations():
        assert declaration["source_labels"] == ["job"]
        assert re.fullmatch(declaration["label_matcher"].strip("^$"), job)


def test_units_are_cloudwatch_units_of_catalogue_metrics():
    units = emf_processor()["metric_unit"]
    assert set(units) <= set(catalogue.CATALOGUE) and set(units) <= declared_metrics()
    assert set(units.values()) <= CLOUDWATCH_UNITS


# --- the scrape config ------------------------------------------------------------


def _relabel_keeps(rules: list[dict], labels: dict[str, str]) -> bool:
    """Prometheus' `keep` relabelling (anchored regex on the `;`-joined source labels)."""
    for rule in rules:
        if rule.get("action") == "keep":
            value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
            if not re.fullmatch(rule["regex"], value):
                return False
    return True


def test_scrape_selects_the_deployments_pods_on_their_metrics_port():
    deployment = load_one(DEPLOYMENT)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in server_container(deployment)["ports"]}
    meta = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v for k, v in pod_labels.items()}
    rules = _job()["relabel_configs"]
    assert _relabel_keeps(rules, {**meta, "__meta_kubernetes_pod_container_port_name": "metrics"})
    assert "metrics" in ports
    for port in ports - {"metrics"}:
        assert not _relabel_keeps(rules, {**meta, "__meta_kubernetes_pod_container_port_name": port})
    assert not _relabel_keeps(rules, {"__meta_kubernetes_pod_container_port_name": "metrics"}), "another app's pod"
    assert _job()["kubernetes_sd_configs"] == [{"role": "pod"}]


def test_scrape_keeps_only_triton_guard_series():
    (rule,) = _job()["metric_relabel_configs"]
    assert rule["action"] == "keep" and rule["source_labels"] == ["__name__"]
    assert all(re.fullmatch(rule["regex"], n) for n in all_series_names())
    assert not re.fullmatch(rule["regex"], "nv_inference_count")


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)")
def test_promtool_checks_the_scrape_config(tmp_path):
    """Debian's Prometheus is built without Kubernetes discovery: the rest is checked with a static target."""
    config = scrape_config()
    job = config["scrape_configs"][0]
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["127.0.0.1:8002"]}]
    path = tmp_path / "prometheus.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
