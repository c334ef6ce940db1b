"""deploy/kubernetes/, checked offline: schemas, and agreement with the image and the code.

Core resources are validated with kubernetes-validate against the Kubernetes
1.30 OpenAPI schemas in strict mode (unknown fields fail). The CRD
(ServiceMonitor) and the Kustomization have no core schema; their structure is
checked here by hand. The probe command itself runs against a real server in
tests/integration/test_deploy_probe.py.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError

from tests.deploy_helpers import (
    KUBERNETES_DIR,
    REPO_ROOT,
    load_documents,
    load_one,
    option,
    readiness_probe_command,
    server_container,
)
from triton_guard import defaults
from triton_guard.cli import build_parser

# The oldest Kubernetes minor still in upstream support when this was written;
# kubernetes-validate bundles its schemas (1.25 .. 1.37 in 1.37.0).
K8S_VERSION = "1.30"

DOCKERFILE = REPO_ROOT / "Dockerfile"
CANARY_CONFIG = REPO_ROOT / "model_repository" / "canary" / "config.pbtxt"

CORE_FILES = ("deployment.yaml", "service.yaml", "pdb.yaml")
CRD_FILES = ("servicemonitor.yaml", "prometheusrule.yaml")
KUSTOMIZATION = "kustomization.yaml"

# Labels NVIDIA GPU Feature Discovery publishes for the driver and the CUDA
# version it supports (NVIDIA/k8s-device-plugin, internal/lm/nvml.go,
# newVersionLabeler): the current names and the deprecated ones it still sets.
GFD_DRIVER_MAJOR_LABELS = {"nvidia.com/cuda.driver-version.major", "nvidia.com/cuda.driver.major"}
GFD_CUDA_LABELS = {
    "nvidia.com/cuda.runtime-version.major",
    "nvidia.com/cuda.runtime-version.minor",
    "nvidia.com/cuda.runtime.major",
    "nvidia.com/cuda.runtime.minor",
}
# CUDA 12.6 (the image's, pins.toml) needs an R560 driver without the
# forward-compatibility package (Triton 24.10 release notes, Driver Requirements).
MIN_DRIVER_MAJOR = 560


# --- reading -----------------------------------------------------------------


def _manifest(name: str) -> dict:
    return load_one(KUBERNETES_DIR / name)


@pytest.fixture(scope="module")
def deployment() -> dict:
    return _manifest("deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    return server_container(deployment)


@pytest.fixture(scope="module")
def pod_spec(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def pod_labels(deployment) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(scope="module")
def service() -> dict:
    return _manifest("service.yaml")


def _dockerfile(keyword: str) -> list[str]:
    """Arguments of every `keyword` instruction (continuations joined, comments dropped)."""
    joined = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, arguments = line.partition(" ")
            if word.upper() == keyword:
                found.append(arguments.strip())
    return found


def _container_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _resolve_port(container: dict, port) -> int:
    """A probe's or Service's port, numeric or named, as the container port number."""
    if isinstance(port, int):
        return port
    return _container_ports(container)[port]


def _security(pod_spec: dict, container: dict, key: str):
    """The effective securityContext value: the container's overrides the pod's."""
    own = container.get("securityContext", {})
    if key in own:
        return own[key]
    return pod_spec.get("securityContext", {}).get(key)


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _bytes(quantity) -> int:
    """A Kubernetes memory quantity in bytes (the suffixes these manifests may use)."""
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMGT])?", str(quantity))
    assert match, f"unsupported quantity {quantity!r}"
    number, suffix = int(match.group(1)), match.group(2)
    return number * (_BINARY.get(suffix) or _DECIMAL.get(suffix) or 1)


def _cpu(quantity) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _probe_args(argv: list[str]):
    """The readiness argv as the real `triton-guard` CLI parses it."""
    assert argv[0] == "triton-guard"
    return build_parser().parse_args(argv[1:])


# --- schemas -----------------------------------------------------------------


@pytest.mark.parametrize("name", CORE_FILES)
def test_core_manifest_validates_strictly_against_pinned_kubernetes(name):
    resource = _manifest(name)
    validated = kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
    # No silent fall-back to an older schema set.
    assert validated == K8S_VERSION


def test_strict_validation_rejects_an_unknown_field(deployment):
    """Strict mode is what catches a misspelt field (e.g. `timeoutSecond`)."""
    broken = copy.deepcopy(deployment)
    server_container(broken)["readinessProbe"]["timeoutSecond"] = 6
    with pytest.raises(kubernetes_validate.ValidationError, match="timeoutSecond"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", CRD_FILES + (KUSTOMIZATION,))
def test_non_core_manifest_has_no_core_schema(name):
    """These are validated by hand below, not by kubernetes-validate."""
    with pytest.raises(SchemaNotFoundError):
        kubernetes_validate.validate(_manifest(name), K8S_VERSION, strict=True)


def test_every_file_holds_one_named_resource_without_namespace():
    for path in sorted(KUBERNETES_DIR.glob("*.yaml")):
        documents = load_documents(path)
        assert len(documents) == 1, path.name
        if path.name == KUSTOMIZATION:
            continue
        metadata = documents[0]["metadata"]
        assert metadata["name"] == "triton-guard", path.name
        # The namespace comes from `kubectl -n` / kustomize, not the files.
        assert "namespace" not in metadata, path.name


def test_kustomization_lists_every_manifest_in_the_folder():
    kustomization = _manifest(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource listed twice"
    on_disk = {p.name for p in KUBERNETES_DIR.iterdir() if p.suffix in (".yaml", ".yml")} - {KUSTOMIZATION}
    assert set(listed) == on_disk
    assert on_disk == set(CORE_FILES + CRD_FILES)


# --- the Deployment and the image --------------------------------------------


def test_deployment_runs_the_image_entrypoint_unchanged(container):
    """No command/args: the image's `triton-guard serve` with its CMD, on default ports."""
    entrypoint = [json.loads(e) for e in _dockerfile("ENTRYPOINT")]
    assert entrypoint[-1] == ["triton-guard", "serve"]
    cmd = json.loads(_dockerfile("CMD")[-1])
    assert not any(arg.endswith("-port") or "-port=" in arg for arg in cmd), cmd
    assert "command" not in container and "args" not in container
    image = container["image"]
    assert re.fullmatch(r"[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})", image), image
    assert not image.endswith(":latest")


def test_container_ports_match_the_defaults(container):
    assert _container_ports(container) == {
        "http": defaults.HTTP_PORT,
        "grpc": defaults.GRPC_PORT,
        "metrics": defaults.METRICS_PORT,
    }


def test_readiness_probe_is_the_canary_probe_within_the_kubelet_timeout(container):
    probe = container["readinessProbe"]
    argv = readiness_probe_command()
    assert argv == probe["exec"]["command"]
    # The same executable as the image's ENTRYPOINT, on its PATH.
    assert argv[0] == json.loads(_dockerfile("ENTRYPOINT")[-1])[0]
    args = _probe_args(argv)
    assert args.command == "probe"
    assert args.url == f"localhost:{defaults.GRPC_PORT}" == option(argv, "--url")
    assert option(argv, "--timeout") is not None, "relying on the default timeout"
    # The probe's own timeout fires first, so it exits with a reason (1 or 2)
    # instead of being killed by the kubelet.
    assert args.timeout < probe["timeoutSeconds"]
    assert probe["timeoutSeconds"] < probe["periodSeconds"]
    assert (probe["periodSeconds"], probe["timeoutSeconds"]) == (10, 6)
    # Out of the Service at the first failed probe; back after one success.
    assert probe["failureThreshold"] == 1
    assert probe["successThreshold"] == 1


def test_canary_deadline_fits_inside_the_probe_timeout():
    text = CANARY_CONFIG.read_text(encoding="utf-8")
    match = re.search(r'key:\s*"deadline_ms",\s*value:\s*\{\s*string_value:\s*"(\d+)"', text)
    deadline_s = int(match.group(1)) / 1000 if match else defaults.CANARY_DEADLINE_MS / 1000
    assert deadline_s < _probe_args(readiness_probe_command()).timeout


def test_liveness_probe_asks_only_whether_triton_is_alive(container):
    probe = container["livenessProbe"]
    assert set(probe) & {"exec", "grpc", "tcpSocket"} == set()
    assert probe["httpGet"]["path"] == "/v2/health/live"
    assert _resolve_port(container, probe["httpGet"]["port"]) == defaults.HTTP_PORT
    # Generous: a busy server is not restarted for a few slow answers.
    assert probe["failureThreshold"] >= 3
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 60


def test_startup_probe_covers_model_loading(container):
    probe = container["startupProbe"]
    assert probe["httpGet"]["path"] == "/v2/health/ready"
    assert _resolve_port(container, probe["httpGet"]["port"]) == defaults.HTTP_PORT
    window_s = probe["failureThreshold"] * probe["periodSeconds"]
    assert window_s >= 180
    # `serve` gives up on its own first; the probe never kills a loading server.
    assert window_s > defaults.SERVER_READY_TIMEOUT_S


def test_resources_ask_for_one_gpu_and_limit_memory(container, pod_spec):
    resources = container["resources"]
    limits, requests = resources["limits"], resources["requests"]
    assert int(limits["nvidia.com/gpu"]) == 1
    assert "memory" in limits, "the canary's headroom check reads the cgroup memory limit"
    assert _bytes(requests["memory"]) <= _bytes(limits["memory"])
    assert _cpu(requests["cpu"]) <= _cpu(limits["cpu"])
    # /dev/shm as a memory-backed emptyDir is charged to the same limit.
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]
    assert _bytes(shm["sizeLimit"]) < _bytes(limits["memory"])


def test_runs_as_the_image_user_without_privileges(pod_spec, container):
    users = _dockerfile("USER")
    uid, _, gid = users[-1].partition(":")
    assert _security(pod_spec, container, "runAsNonRoot") is True
    assert _security(pod_spec, container, "runAsUser") == int(uid) == 1000
    if gid:
        assert _security(pod_spec, container, "runAsGroup") == int(gid)
    assert _security(pod_spec, container, "allowPrivilegeEscalation") is False
    assert _security(pod_spec, container, "privileged") in (None, False)


def test_read_only_root_has_writable_tmp_and_memory_backed_shm(pod_spec, container):
    assert _security(pod_spec, container, "readOnlyRootFilesystem") is True
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/tmp", "/dev/shm"):
        assert path in mounts, f"{path} not writable"
        assert not mounts[path].get("readOnly", False)
        assert "emptyDir" in volumes[mounts[path]["name"]]
    shm = volumes[mounts["/dev/shm"]["name"]]["emptyDir"]
    assert shm["medium"] == "Memory"
    assert "sizeLimit" in shm


def test_grace_period_outlasts_tritons_exit_timeout(pod_spec, container):
    pre_stop_s = 0
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if pre_stop.get("exec", {}).get("command", [None])[0] == "sleep":
        pre_stop_s = int(pre_stop["exec"]["command"][1])
    # Triton's own --exit-timeout-secs defaults to 30 s, as does serve's wait.
    assert pod_spec["terminationGracePeriodSeconds"] > pre_stop_s + max(30, defaults.SERVER_STOP_TIMEOUT_S)


def test_pod_template_carries_prometheus_scrape_annotations(deployment):
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(defaults.METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_node_affinity_requires_a_driver_for_cuda_12_6(pod_spec):
    required = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    terms = required["nodeSelectorTerms"]
    assert terms
    # Terms are ORed: every one of them must pin the driver, or one term
    # without it would admit any node.
    for term in terms:
        expressions = term["matchExpressions"]
        driver = [e for e in expressions if e["key"] in GFD_DRIVER_MAJOR_LABELS]
        cuda = [e for e in expressions if e["key"] in GFD_CUDA_LABELS]
        assert driver or cuda, f"term without a GFD driver/CUDA label: {term}"
        for e in driver:
            assert e["operator"] == "Gt"
            assert int(e["values"][0]) + 1 == MIN_DRIVER_MAJOR
        # Every nvidia.com/ label used is one GFD actually publishes.
        for e in expressions:
            if e["key"].startswith("nvidia.com/cuda"):
                assert e["key"] in GFD_DRIVER_MAJOR_LABELS | GFD_CUDA_LABELS, e["key"]
    # Both GFD generations are covered: current and deprecated label names.
    keys = {e["key"] for term in terms for e in term["matchExpressions"]}
    assert GFD_DRIVER_MAJOR_LABELS <= keys


def test_tolerates_the_gpu_taint(pod_spec):
    assert any(
        t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in pod_spec.get("tolerations", [])
    )


def test_deployment_selector_matches_its_pods(deployment, pod_labels):
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()


# --- Service, PDB, ServiceMonitor ----------------------------------------------


def test_service_selects_the_deployments_pods_and_exposes_its_ports(service, deployment, pod_labels, container):
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    selector = service["spec"]["selector"]
    assert selector and selector.items() <= pod_labels.items()
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "grpc", "metrics"}
    expected = {"http": defaults.HTTP_PORT, "grpc": defaults.GRPC_PORT, "metrics": defaults.METRICS_PORT}
    for name, number in expected.items():
        assert ports[name]["port"] == number
        assert _resolve_port(container, ports[name].get("targetPort", number)) == number


def test_pdb_selects_the_deployments_pods(pod_labels):
    pdb = _manifest("pdb.yaml")
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items()
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])


def test_servicemonitor_scrapes_the_services_metrics_port(service):
    monitor = _manifest("servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels"}
    selector = spec["selector"]["matchLabels"]
    assert selector and selector.items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in service_ports, f"no Service port named {endpoint['port']!r}"
        assert service_ports[endpoint["port"]] == defaults.METRICS_PORT
        assert endpoint.get("path", "/metrics") == "/metrics"
        if "interval" in endpoint and "scrapeTimeout" in endpoint:
            assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_readiness_probe_command_helper_reads_the_file(tmp_path):
    """The helper returns the argv as written, from any deployment file."""
    text = (KUBERNETES_DIR / "deployment.yaml").read_text(encoding="utf-8")
    copy_path = Path(tmp_path) / "deployment.yaml"
    copy_path.write_text(text.replace('"--timeout", "4"', '"--timeout", "3"'), encoding="utf-8")
    assert option(readiness_probe_command(copy_path), "--timeout") == "3"
    assert readiness_probe_command()[:2] == ["triton-guard", "probe"]
