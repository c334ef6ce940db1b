"""deploy/istio/, checked offline: outlier detection that ejects on gateway errors only.

The DestinationRule is a CRD (no core schema for kubernetes-validate), so its
structure is checked here against Istio's OutlierDetection fields, and its
meaning against what triton-guard answers: the codes of a sick pod (an open
breaker, a guard deadline, a frozen or unreachable server) eject it, a 500
(Triton 2.51's answer to an unparseable HTTP body, pinned in
tests/integration/test_pipeline.py) and a 400 never do. The Envoy fragment
must say the same in Envoy's terms.
"""

from __future__ import annotations

import re

import grpc
import pytest
import yaml

from tests.deploy_helpers import KUBERNETES_DIR, REPO_ROOT, load_one
from triton_guard.client.guard import HTTP_STATUS

ISTIO_DIR = REPO_ROOT / "deploy" / "istio"
DESTINATION_RULE = ISTIO_DIR / "destinationrule.yaml"
ENVOY_FRAGMENT = ISTIO_DIR / "envoy-outlier-detection.yaml"
# istio.networking.v1.OutlierDetection's fields (consecutiveErrors is long deprecated).
ISTIO_OUTLIER_FIELDS = {
    "splitExternalLocalOriginErrors",
    "consecutiveLocalOriginFailures",
    "consecutiveGatewayErrors",
    "consecutive5xxErrors",
    "interval",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
}
GATEWAY_ERRORS = {502, 503, 504}  # what Envoy's consecutive_gateway_failure counts (plus connection failures)


@pytest.fixture(scope="module")
def rule() -> dict:
    return load_one(DESTINATION_RULE)


@pytest.fixture(scope="module")
def outlier(rule) -> dict:
    return rule["spec"]["trafficPolicy"]["outlierDetection"]


def _seconds(duration: str) -> float:
    """An Istio (protobuf) duration such as 10s, 1m, 500ms."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, f"not an Istio duration: {duration!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def test_it_is_a_destination_rule_for_the_service(rule):
    service = load_one(KUBERNETES_DIR / "service.yaml")
    assert rule["apiVersion"] == "networking.istio.io/v1"
    assert rule["kind"] == "DestinationRule"
    assert rule["metadata"]["name"] == "triton-guard" and "namespace" not in rule["metadata"]
    assert rule["spec"]["host"] == service["metadata"]["name"]
    assert set(rule["spec"]) == {"host", "trafficPolicy"}
    assert set(rule["spec"]["trafficPolicy"]) == {"outlierDetection"}


def test_outlier_fields_are_istios(outlier):
    assert set(outlier) <= ISTIO_OUTLIER_FIELDS
    for key in ("interval", "baseEjectionTime"):
        assert _seconds(outlier[key]) > 0
    assert 0 < outlier["maxEjectionPercent"] < 100, "a fault shared by every pod must not empty the Service"


def test_ejects_on_gateway_errors_and_never_on_500(outlier):
    assert outlier["consecutiveGatewayErrors"] >= 1
    # Istio's default for consecutive5xxErrors is 5: it must be turned off explicitly.
    assert outlier["consecutive5xxErrors"] == 0
    assert "consecutiveLocalOriginFailures" not in outlier and not outlier.get("splitExternalLocalOriginErrors")


def test_what_a_sick_pod_answers_ejects_and_what_a_bad_client_causes_does_not():
    """The codes triton-guard's errors carry (docs/breaker.md, "Errors clients see") against the gateway-error set."""
    sick = {
        "breaker open": HTTP_STATUS[grpc.StatusCode.UNAVAILABLE],
        "guard deadline": HTTP_STATUS[grpc.StatusCode.UNAVAILABLE],
        "bulkhead full": HTTP_STATUS[grpc.StatusCode.UNAVAILABLE],
        "server frozen (gRPC deadline)": HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED],
    }
    client = {
        "malformed input": HTTP_STATUS[grpc.StatusCode.INVALID_ARGUMENT],
        "unparseable HTTP body (Triton 2.51)": 500,
    }
    assert all(code in GATEWAY_ERRORS for code in sick.values()), sick
    assert not any(code in GATEWAY_ERRORS for code in client.values()), client


def test_the_envoy_fragment_says_the_same(outlier):
    envoy = yaml.safe_load(ENVOY_FRAGMENT.read_text(encoding="utf-8"))["outlier_detection"]
    assert envoy["consecutive_gateway_failure"] == outlier["consecutiveGatewayErrors"]
    assert envoy["enforcing_consecutive_gateway_failure"] == 100  # Envoy's default is 0
    assert envoy["enforcing_consecutive_5xx"] == 0
    assert envoy["enforcing_success_rate"] == 0  # on by default, and it counts 500s
    assert _seconds(envoy["interval"]) == _seconds(outlier["interval"])
    assert _seconds(envoy["base_ejection_time"]) == _seconds(outlier["baseEjectionTime"])
    assert envoy["max_ejection_percent"] == outlier["maxEjectionPercent"]


def test_the_mesh_rule_stays_out_of_the_kustomization():
    """Like a CRD the cluster may not have: applying deploy/kubernetes must work without Istio."""
    resources = load_one(KUBERNETES_DIR / "kustomization.yaml")["resources"]
    assert not any("destinationrule" in r.lower() for r in resources)
