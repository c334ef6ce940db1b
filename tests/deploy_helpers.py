"""Read deploy/kubernetes/ for the tests: manifests, the Deployment's container, its probe argv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
DEPLOYMENT = KUBERNETES_DIR / "deployment.yaml"


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in `path`."""
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def load_one(path: Path) -> dict[str, Any]:
    """The single resource in `path` (each manifest here holds exactly one)."""
    documents = load_documents(path)
    assert len(documents) == 1, f"{path.name}: expected one resource, found {len(documents)}"
    return documents[0]


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The `triton-guard` container of the Deployment."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == "triton-guard"]
    assert len(matches) == 1, f"expected one container named triton-guard, found {len(matches)}"
    return matches[0]


def readiness_probe_command(path: Path = DEPLOYMENT) -> list[str]:
    """The readinessProbe's exec argv, exactly as deployment.yaml gives it to the kubelet."""
    probe = server_container(load_one(path))["readinessProbe"]
    command = probe["exec"]["command"]
    assert isinstance(command, list) and all(isinstance(a, str) for a in command), command
    return list(command)


def option(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in argv; None if absent."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    """argv with `name`'s value replaced (it must be present)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == name and i + 1 < len(out):
            out[i + 1] = value
            return out
        if arg.startswith(name + "="):
            out[i] = f"{name}={value}"
            return out
    raise ValueError(f"{name} not in {argv}")
