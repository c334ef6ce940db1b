"""deploy/grafana/ and deploy/prometheus/, checked offline.

The dashboard's structure, the alert rules' structure, the PrometheusRule
wrapper against the plain rule file, and every metric the PromQL names
against the metrics catalogue (triton_guard.metrics), label values included. A small PromQL tokenizer finds the
metric names; it is tested here too. tests/integration/test_observability_live.py
checks the same names against a real server's /metrics. Where `promtool`
(Debian package `prometheus`) is on PATH, the rules also go through
`promtool check rules` and a `promtool test rules` run on synthetic series.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy_helpers import KUBERNETES_DIR, REPO_ROOT, load_one
from triton_guard import metrics as catalogue

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "triton-guard-dashboard.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "triton-guard-alerts.yaml"
PROMETHEUS_RULE = KUBERNETES_DIR / "prometheusrule.yaml"
DS_VARIABLE = "DS_PROMETHEUS"
DS_UID = "${DS_PROMETHEUS}"

HISTOGRAM_SUFFIXES = catalogue.HISTOGRAM_SUFFIXES
HISTOGRAMS = frozenset(m.name for m in catalogue.CATALOGUE.values() if m.kind is catalogue.Kind.HISTOGRAM)

# --- allow-lists (shared with the live test) ----------------------------------

# Triton publishes its GPU gauges only where it sees a GPU (DCGM); the CPU test
# server has none. Names as in Triton's metrics documentation (docs/user_guide/metrics.md).
GPU_ONLY_TRITON_METRICS = {
    "nv_gpu_memory_used_bytes": "GPU memory per GPU; Triton exposes nv_gpu_* only when it sees a GPU",
}
# Series Prometheus adds per scrape target; never on an exporter's /metrics.
PROMETHEUS_SYNTHESIZED = {
    "up": "1 while Prometheus scrapes the target, 0 when the scrape fails (TritonGuardCanaryStale)",
}
# Families whose first series appear on the first event of their kind (a
# breaker transition, a rejection, a failed upstream call): a healthy server has none.
FAULT_ONLY_GUARD_METRICS = {
    m.name: f"first series at {m.first_series_on}" for m in catalogue.CATALOGUE.values() if m.first_series_on
}

# Label values the code can publish, for literal matchers in the PromQL.
KNOWN_LABEL_VALUES = {
    (m.name, label): set(values)
    for m in catalogue.CATALOGUE.values()
    for label, values in m.labels.items()
    if values is not None
}

EXPECTED_ALERTS = {
    "TritonGuardBreakerOpen": "1m",
    "TritonGuardBreakerFlapping": None,  # a 15-minute increase() is its own smoothing
    "TritonGuardCanaryFailing": "2m",
    "TritonGuardCanaryStale": "5m",
    "TritonGuardMemoryHeadroomTrend": "5m",
    "TritonGuardMemoryBelowFloor": "2m",
    "TritonGuardDriftAlarm": "10m",
    "TritonGuardUpstreamTimeouts": "5m",
    "TritonGuardRejecting": "5m",
    "TritonGuardOverloaded": "5m",
    "TritonGuardInstanceMemoryLeak": "2m",
}
SEVERITIES = {"critical", "warning", "info"}

# --- a small PromQL tokenizer --------------------------------------------------

AGGREGATIONS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio".split()
)
KEYWORDS = frozenset(
    "and or unless bool offset by without on ignoring group_left group_right atan2 inf nan start end".split()
)
FUNCTIONS = frozenset(
    """abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week
    day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count histogram_fraction
    histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters double_exponential_smoothing
    hour idelta increase irate label_join label_replace ln log2 log10 minute month predict_linear rate resets
    round scalar sgn sort sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector year
    avg_over_time min_over_time max_over_time sum_over_time count_over_time quantile_over_time
    stddev_over_time stdvar_over_time last_over_time present_over_time mad_over_time
    acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg pi rad info""".split()
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(
    r"(?P<number>\d[\w.]*)|(?P<variable>\$\{[^}]*\}|\$\w+)|(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?"
)
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<args>.*)\)\s*$", re.DOTALL)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression, as written (histogram suffixes kept).

    Strings, label matchers `{...}`, ranges `[...]` and grouping clauses
    `by (...)` (their label names) go first; what is left is metric names,
    functions and aggregations (a name followed by `(`), keywords, numbers,
    durations and Grafana variables.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("[]", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for token in _TOKEN.finditer(text):
        name = token.group("name")
        if name is None or token.group("call"):
            continue
        if name.lower() in KEYWORDS or name in AGGREGATIONS or name in FUNCTIONS:
            continue
        names.add(name)
    return names


def label_values_selector(query: str) -> str:
    """The series selector of a Grafana `label_values(selector, label)` query ('' for `label_values(label)`)."""
    match = _LABEL_VALUES.match(query)
    assert match, f"not a label_values() query: {query!r}"
    args = match.group("args")
    selector, comma, label = args.rpartition(",")
    if not comma:
        return ""
    assert re.fullmatch(r"\s*[A-Za-z_]\w*\s*", label), query
    return selector.strip()


def metric_family(name: str, histograms=HISTOGRAMS) -> str:
    """A histogram's `_bucket`/`_sum`/`_count` series back to its family; any other name unchanged."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in histograms:
            return name[: -len(suffix)]
    return name


def label_matchers(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, operator, value) for every literal matcher written `metric{label op "value"}`."""
    found = []
    for selector in re.finditer(r"([A-Za-z_:][\w:]*)\{([^{}]*)\}", expr):
        metric, body = selector.groups()
        for matcher in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:\\.|[^"\\])*)"', body):
            found.append((metric, *matcher.groups()))
    return found


# --- reading -------------------------------------------------------------------


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def load_alert_groups() -> dict:
    with open(ALERTS, encoding="utf-8") as f:
        return yaml.safe_load(f)


def alert_rules(groups: dict | None = None) -> list[dict]:
    groups = groups if groups is not None else load_alert_groups()
    return [rule for group in groups["groups"] for rule in group["rules"]]


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_exprs(dashboard: dict | None = None) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable's selector."""
    dashboard = dashboard if dashboard is not None else load_dashboard()
    exprs = [
        (f"panel {panel['title']!r}", target["expr"])
        for panel in dashboard_panels(dashboard)
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            selector = label_values_selector(query)
            if selector:
                exprs.append((f"variable {variable['name']!r}", selector))
    return exprs


def all_exprs() -> list[tuple[str, str]]:
    return dashboard_exprs() + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]


def referenced_families() -> set[str]:
    """Every metric family the dashboard and the alert rules name."""
    return {metric_family(name) for _, expr in all_exprs() for name in promql_metric_names(expr)}


def declared_guard_metrics() -> set[str]:
    """triton_guard_* families in the catalogue (the only place one is declared)."""
    return set(catalogue.CATALOGUE)


# --- the tokenizer ---------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, names",
    [
        ("triton_guard_breaker_state == 1", {"triton_guard_breaker_state"}),
        ("up", {"up"}),
        (
            "sum by (model, reason) "
            '(rate(triton_guard_rejections_total{instance=~"$instance", reason="open"}[$__rate_interval]))',
            {"triton_guard_rejections_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le, model) (rate(x_seconds_bucket{model=~\"$model\"}[5m])))",
            {"x_seconds_bucket"},
        ),
        ("sum(rate(a_sum[5m])) by (model) / sum(rate(a_count[5m])) by (model)", {"a_sum", "a_count"}),
        ("free_bytes < ignoring (source) group_left floor_bytes", {"free_bytes", "floor_bytes"}),
        ("a / on (job, instance) group_left (source, check) b", {"a", "b"}),
        (
            "absent(foo) or ((present_over_time(bar[1h]) unless on (job, instance) bar) and on (job, instance) up)",
            {"foo", "bar", "up"},
        ),
        ("clamp_max(foo, 86400) > bool 1e3 and foo offset 1h30m", {"foo"}),
        ("sum without (reason) (rate(x_total[5m] offset 1h)) > 1", {"x_total"}),
        ('label_replace(foo, "dst", "$1 {not_a_metric} bar", "src", "(.*)")', {"foo"}),
        ("max_over_time(rec:rule:rate5m[10m:1m]) >= Inf or vector(NaN)", {"rec:rule:rate5m"}),
        ("count(count by (model) (x)) - scalar(y) * -0.5", {"x", "y"}),
        ("topk(3, sum by(model)(rate(z[${__rate_interval}])))", {"z"}),
    ],
)
def test_promql_metric_names(expr, names):
    assert promql_metric_names(expr) == names


def test_metric_family_strips_histogram_suffixes_only_for_histograms():
    assert metric_family("triton_guard_upstream_call_seconds_bucket") == catalogue.UPSTREAM_CALL_SECONDS.name
    assert metric_family("triton_guard_upstream_call_seconds_count") == catalogue.UPSTREAM_CALL_SECONDS.name
    assert metric_family("triton_guard_upstream_call_seconds_sum") == catalogue.UPSTREAM_CALL_SECONDS.name
    # A counter that merely ends in _count stays itself.
    assert metric_family("nv_inference_count") == "nv_inference_count"
    assert metric_family("nv_inference_exec_count") == "nv_inference_exec_count"


def test_label_values_selector():
    assert label_values_selector('label_values(foo{instance=~"$instance"}, model)') == 'foo{instance=~"$instance"}'
    assert label_values_selector("label_values(foo, instance)") == "foo"
    assert label_values_selector("label_values(instance)") == ""


def test_label_matchers():
    expr = 'rate(a{reason="timeout", model=~"$model"}[5m]) + b{to!="OPEN"}'
    assert label_matchers(expr) == [
        ("a", "reason", "=", "timeout"),
        ("a", "model", "=~", "$model"),
        ("b", "to", "!=", "OPEN"),
    ]


# --- the dashboard ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


def test_dashboard_is_a_dashboard(dashboard):
    assert dashboard["title"] and dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert "id" not in dashboard or dashboard["id"] is None, "an id pins the dashboard to one Grafana"
    assert isinstance(dashboard["panels"], list) and dashboard["panels"]


def test_datasource_is_a_template_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables[DS_VARIABLE]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    # No datasource name or uid of one particular Grafana anywhere.
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == DS_UID, variable["name"]


def test_panel_ids_are_unique(dashboard):
    ids = [panel["id"] for panel in dashboard_panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))


def test_every_panel_has_title_description_and_queries_on_the_variable(dashboard):
    panels = [p for p in dashboard_panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 15
    for panel in panels:
        title = panel.get("title")
        assert title, panel["id"]
        # The description says what the panel shows and what to do when it looks bad.
        assert len(panel.get("description", "")) >= 120, f"{title}: description too short"
        assert panel["datasource"] == {"type": "prometheus", "uid": DS_UID}, title
        targets = panel.get("targets")
        assert targets, f"{title}: no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in targets:
            assert target.get("expr", "").strip(), f"{title}: target without expr"
            assert target["datasource"]["uid"] == DS_UID, title


def test_panel_titles_are_unique(dashboard):
    titles = [p["title"] for p in dashboard_panels(dashboard) if p["type"] != "row"]
    assert len(titles) == len(set(titles))


def test_panels_fit_the_grid_without_overlapping(dashboard):
    boxes = []
    for panel in dashboard_panels(dashboard):
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        boxes.append((panel["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for i, (a, ax0, ay0, ax1, ay1) in enumerate(boxes):
        for b, bx0, by0, bx1, by1 in boxes[i + 1 :]:
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, f"{a!r} overlaps {b!r}"


def test_every_panel_sits_under_a_row(dashboard):
    top = sorted(dashboard["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    assert top[0]["type"] == "row"
    rows = [p["title"] for p in top if p["type"] == "row"]
    assert len(rows) == len(set(rows)) >= 5


def test_dashboard_variables_used_are_defined(dashboard):
    defined = {v["name"] for v in dashboard["templating"]["list"]}
    builtin = {"__rate_interval", "__interval", "__range"}
    for where, expr in dashboard_exprs(dashboard):
        for name in re.findall(r"\$\{?(\w+)", expr):
            assert name in defined | builtin, f"{where}: ${name} is not a dashboard variable"


@pytest.mark.parametrize(
    "family",
    sorted(
        set(catalogue.CATALOGUE)
        | {"nv_inference_request_success", "nv_inference_request_failure", "nv_inference_pending_request_count"}
    ),
)
def test_dashboard_shows(dashboard, family):
    shown = {metric_family(n) for _, expr in dashboard_exprs(dashboard) for n in promql_metric_names(expr)}
    assert family in shown


def test_dashboard_shows_every_metric_triton_guard_declares(dashboard):
    shown = {metric_family(n) for _, expr in dashboard_exprs(dashboard) for n in promql_metric_names(expr)}
    assert declared_guard_metrics() <= shown


def test_latency_panel_has_p50_and_p99_from_the_histogram(dashboard):
    exprs = [e for _, e in dashboard_exprs(dashboard) if "histogram_quantile" in e]
    quantiles = {re.search(r"histogram_quantile\(\s*([\d.]+)", e).group(1) for e in exprs}
    assert {"0.5", "0.99"} <= quantiles
    for expr in exprs:
        assert f"{catalogue.UPSTREAM_CALL_SECONDS.name}_bucket" in expr and "le" in re.search(r"by \(([^)]*)\)", expr).group(1)


# --- the alert rules ------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules() -> list[dict]:
    return alert_rules()


def test_alert_file_is_a_rule_file(rules):
    groups = load_alert_groups()
    assert set(groups) == {"groups"}
    names = [g["name"] for g in groups["groups"]]
    assert names and len(names) == len(set(names))
    assert {r["alert"] for r in rules} == set(EXPECTED_ALERTS)
    assert len(rules) == len(EXPECTED_ALERTS)


def test_every_rule_is_complete(rules):
    for rule in rules:
        name = rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, name
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        for key in ("summary", "description", "runbook"):
            assert isinstance(annotations.get(key), str) and annotations[key].strip(), f"{name}: no {key}"
        assert "deploy/README.md" in annotations["runbook"], name
        assert rule.get("for") == EXPECTED_ALERTS[name], name
        for text in (rule["expr"], *annotations.values()):
            assert text.count("{{") == text.count("}}"), name
            assert text.count("(") == text.count(")"), name


def _rule(rules, name):
    return next(r for r in rules if r["alert"] == name)


def test_rules_say_what_was_asked(rules):
    """The thresholds of the brief, read from the expressions."""
    assert re.fullmatch(r"triton_guard_breaker_state\s*==\s*1", _rule(rules, "TritonGuardBreakerOpen")["expr"])
    flapping = _rule(rules, "TritonGuardBreakerFlapping")["expr"]
    assert 'to="OPEN"' in flapping and "[15m]" in flapping and re.search(r">\s*\d+\s*$", flapping)
    canary = _rule(rules, "TritonGuardCanaryFailing")
    assert re.fullmatch(r"triton_guard_canary_ready\s*==\s*0", canary["expr"])
    assert "triton_guard_canary_check_ok" in canary["annotations"]["description"]
    assert "| query" in canary["annotations"]["description"]
    assert "< 900" in _rule(rules, "TritonGuardMemoryHeadroomTrend")["expr"]
    below = _rule(rules, "TritonGuardMemoryBelowFloor")["expr"]
    assert promql_metric_names(below) == {"triton_guard_memory_free_bytes", "triton_guard_memory_floor_bytes"}
    assert re.fullmatch(r"triton_guard_drift_alarm\s*==\s*1", _rule(rules, "TritonGuardDriftAlarm")["expr"])
    timeouts = _rule(rules, "TritonGuardUpstreamTimeouts")["expr"]
    assert 'reason="timeout"' in timeouts and re.search(r">\s*0\s*$", timeouts)
    assert re.search(r">\s*1\s*$", _rule(rules, "TritonGuardRejecting")["expr"])
    overloaded = _rule(rules, "TritonGuardOverloaded")["expr"]
    assert "triton_guard_canary_overloaded[10m]" in overloaded and re.search(r">\s*0\.5\s*$", overloaded)
    leak = _rule(rules, "TritonGuardInstanceMemoryLeak")
    assert re.fullmatch(r"triton_guard_instance_memory_seconds_to_floor\s*<\s*900", leak["expr"])
    assert "exported_instance" in leak["annotations"]["summary"]
    stale = _rule(rules, "TritonGuardCanaryStale")["expr"]
    assert "absent(triton_guard_canary_ready)" in stale and "up" in promql_metric_names(stale)


def test_prometheus_rule_wraps_exactly_the_same_rules():
    wrapper = load_one(PROMETHEUS_RULE)
    assert wrapper["apiVersion"] == "monitoring.coreos.com/v1"
    assert wrapper["kind"] == "PrometheusRule"
    assert wrapper["metadata"]["name"] == "triton-guard"
    assert set(wrapper["spec"]) == {"groups"}
    assert wrapper["spec"] == load_alert_groups()
    assert alert_rules(wrapper["spec"]) == alert_rules()


def test_prometheus_rule_is_in_the_kustomization():
    assert PROMETHEUS_RULE.name in load_one(KUBERNETES_DIR / "kustomization.yaml")["resources"]


# --- the metrics named ------------------------------------------------------------------


def test_every_expression_names_a_metric_and_balances():
    for where, expr in all_exprs():
        assert promql_metric_names(expr), f"{where}: no metric in {expr!r}"
        stripped = _STRING.sub('""', expr)
        for open_, close in ("()", "{}", "[]"):
            assert stripped.count(open_) == stripped.count(close), f"{where}: unbalanced {open_}{close}"


def test_every_metric_named_is_one_the_server_publishes():
    """triton_guard_* names the code declares; nv_* (Triton's, checked live); `up` (Prometheus')."""
    declared = declared_guard_metrics()
    for family in referenced_families():
        if family.startswith("triton_guard_"):
            assert family in declared, f"{family} is not in the catalogue (src/triton_guard/metrics.py)"
        else:
            assert family.startswith("nv_") or family in PROMETHEUS_SYNTHESIZED, family


def test_allow_lists_name_only_metrics_actually_used():
    used = referenced_families()
    for allowed in (GPU_ONLY_TRITON_METRICS, PROMETHEUS_SYNTHESIZED, FAULT_ONLY_GUARD_METRICS):
        assert set(allowed) <= used


def test_fault_only_metrics_are_declared_guard_metrics():
    assert set(FAULT_ONLY_GUARD_METRICS) == {
        catalogue.BREAKER_TRANSITIONS.name, catalogue.REJECTIONS.name, catalogue.UPSTREAM_FAILURES.name, catalogue.STATE_DAMAGE.name,
        # The canary's: a leak trend verdict (trend_min_span_s after the start), an in-process guard on a GPU, a leak reload.
        catalogue.INSTANCE_MEMORY_GROWTH.name, catalogue.ALLOCATOR_RETRIES.name, catalogue.ALLOCATOR_OOMS.name,
        catalogue.LEAK_RELOADS.name,
    }
    assert set(FAULT_ONLY_GUARD_METRICS) <= declared_guard_metrics()


def test_literal_label_values_are_ones_the_code_publishes():
    checked = 0
    for where, expr in all_exprs():
        for metric, label, op, value in label_matchers(expr):
            known = KNOWN_LABEL_VALUES.get((metric_family(metric), label))
            if known is None or "$" in value:
                continue
            values = value.split("|") if op in ("=~", "!~") else [value]
            assert set(values) <= known, f"{where}: {metric}{{{label}{op}{value!r}}} not in {sorted(known)}"
            checked += 1
    assert checked >= 4


# --- promtool, where installed --------------------------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_checks_the_rule_file_and_the_wrapped_rules(tmp_path):
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text(yaml.safe_dump(load_one(PROMETHEUS_RULE)["spec"]), encoding="utf-8")
    for path in (ALERTS, wrapped):
        result = _promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{len(EXPECTED_ALERTS)} rules found" in result.stdout


def _series(name: str, values: str, **labels) -> dict:
    labels = {"job": "triton-guard", "instance": "pod-a:8002", **labels}
    body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{body}}}", "values": values}


@needs_promtool
def test_promtool_alert_expressions_fire_on_faults_and_not_on_a_healthy_server(tmp_path):
    """Each rule's expr (read from the file) over 15 minutes of synthetic series at 15 s."""
    rules = {r["alert"]: r for r in alert_rules()}
    # 61 samples, 15 s apart: 0 .. 15 min.
    faulty = [
        _series(catalogue.BREAKER_STATE.name, "1x60", model="classifier"),
        _series(catalogue.BREAKER_TRANSITIONS.name, "0+1x60", model="classifier", to="OPEN"),  # 4 per minute
        _series("triton_guard_canary_ready", "1x20 _x40"),  # vanished after 5 min
        _series("up", "1x20 0x40"),  # scrapes failing
        _series("triton_guard_memory_seconds_to_floor", "600x60"),
        _series("triton_guard_memory_free_bytes", "100x60", source="gpu"),
        _series("triton_guard_memory_floor_bytes", "200x60"),
        _series("triton_guard_drift_alarm", "1x60"),
        _series(catalogue.UPSTREAM_FAILURES.name, "0+1x60", model="classifier", reason="timeout"),
        _series(catalogue.REJECTIONS.name, "0+30x60", model="classifier", reason="open"),  # 2 per second
        _series("triton_guard_canary_ready", "0x60", instance="pod-b:8002"),
        _series("up", "1x60", instance="pod-b:8002"),
        _series("triton_guard_canary_overloaded", "1x60"),
        # The per-instance series carries the model instance in its own label (exported_instance on a default scrape).
        _series(catalogue.INSTANCE_SECONDS_TO_FLOOR.name, "600x60", model="classifier", exported_instance="classifier_0_1"),
        _series(catalogue.INSTANCE_SECONDS_TO_FLOOR.name, " ".join(["Inf"] * 61), model="classifier",
                exported_instance="classifier_0_0"),
    ]
    healthy = [
        _series(catalogue.BREAKER_STATE.name, "2x60", model="classifier"),  # HALF_OPEN is not OPEN
        _series(catalogue.BREAKER_TRANSITIONS.name, "0x20 1x40", model="classifier", to="OPEN"),  # one opening
        _series("triton_guard_canary_ready", "1x60"),
        _series("up", "1x60"),
        _series("triton_guard_memory_seconds_to_floor", " ".join(["Inf"] * 61)),  # not falling
        _series("triton_guard_memory_free_bytes", "300x60", source="gpu"),
        _series("triton_guard_memory_floor_bytes", "200x60"),
        _series("triton_guard_drift_alarm", "0x60"),
        _series(catalogue.UPSTREAM_FAILURES.name, "0x20 1x40", model="classifier", reason="timeout"),  # one, 10 min ago
        _series(catalogue.UPSTREAM_FAILURES.name, "0+1x60", model="classifier", reason="client_error"),
        _series(catalogue.REJECTIONS.name, "0+6x60", model="classifier", reason="overloaded"),  # 0.4 per second
        _series("triton_guard_canary_overloaded", "0x20 1x16 0x24"),  # a 4-minute burst is not sustained
        # A warm-up: steady growth never reached (+Inf), then a projection far beyond 15 minutes.
        _series(catalogue.INSTANCE_SECONDS_TO_FLOOR.name, " ".join(["Inf"] * 30 + ["7200"] * 31), model="classifier",
                exported_instance="classifier_0_1"),
    ]
    pod_a = {"job": "triton-guard", "instance": "pod-a:8002"}
    fires = {
        "TritonGuardBreakerOpen": pod_a,
        "TritonGuardBreakerFlapping": pod_a,
        "TritonGuardCanaryFailing": {"job": "triton-guard", "instance": "pod-b:8002"},
        "TritonGuardCanaryStale": pod_a,
        "TritonGuardMemoryHeadroomTrend": pod_a,
        "TritonGuardMemoryBelowFloor": pod_a,
        "TritonGuardDriftAlarm": pod_a,
        "TritonGuardUpstreamTimeouts": pod_a,
        "TritonGuardRejecting": pod_a,
        "TritonGuardOverloaded": pod_a,
        "TritonGuardInstanceMemoryLeak": pod_a,  # only classifier_0_1's series (count by job, instance = 1)
    }
    assert set(fires) == set(EXPECTED_ALERTS)

    def case(name, labels):
        """The rule's expr selects exactly one series, of `labels` (None: none at all), at 12 min."""
        expected = []
        if labels is not None:
            expected = [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "value": 1}]
        return {"expr": f"count by (job, instance) ({rules[name]['expr']})", "eval_time": "12m", "exp_samples": expected}

    tests = [
        {"interval": "15s", "input_series": faulty, "promql_expr_test": [case(n, l) for n, l in fires.items()]},
        {"interval": "15s", "input_series": healthy, "promql_expr_test": [case(n, None) for n in fires]},
        # Nothing scraped at all: only the absent() branch can say so.
        {
            "interval": "15s",
            "input_series": [_series("up", "0x60")],
            "promql_expr_test": [
                {
                    "expr": rules["TritonGuardCanaryStale"]["expr"],
                    "eval_time": "12m",
                    "exp_samples": [{"labels": "{}", "value": 1}],
                }
            ],
        },
    ]
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "15s", "tests": tests}))
    result = _promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
