"""Reading Prometheus text exposition (Triton's /metrics) with prometheus_client's parser."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from triton_guard import defaults


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


def parse(text: str) -> list[Sample]:
    """Every sample. prometheus_client names a counter's samples `<family>_total`
    even where the exposition does not (Triton's `nv_inference_exec_count`):
    look names up with `matches`, which accepts both spellings."""
    return [
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metrics_url_for(grpc_url: str, reported: str | None = None) -> str:
    """Triton's metrics endpoint on the gRPC URL's host: the port the canary reported, else the default."""
    host = grpc_url.rsplit(":", 1)[0] if ":" in grpc_url else grpc_url
    port = defaults.METRICS_PORT
    if reported:
        try:
            port = urllib.parse.urlsplit(reported).port or port
        except ValueError:
            pass
    return f"http://{host}:{port}/metrics"


def fetch(url: str, timeout_s: float) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return parse(response.read().decode())


def sum_by_name(samples: list[Sample]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for s in samples:
        totals[s.name] += s.value
    return dict(totals)


def matches(sample_name: str, name: str) -> bool:
    """`sample_name` is `name` as exposed, or as prometheus_client renames a counter."""
    return sample_name == name or (sample_name == name + "_total" and not name.endswith("_total"))


def by_label(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    """{label value: value} for one metric name (summed where other labels differ)."""
    values: dict[str, float] = defaultdict(float)
    for s in samples:
        if matches(s.name, name) and label in s.labels:
            values[s.labels[label]] += s.value
    return dict(values)
