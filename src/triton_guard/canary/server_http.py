"""`HttpServer`: the server facts the canary reads over Triton's own HTTP endpoints.

The repository index (every model the server tried to load, with its state),
a model's configuration, the server's version and readiness, and its
Prometheus /metrics, at the URLs
the canary is given ($TRITON_GUARD_HTTP_URL, $TRITON_GUARD_METRICS_URL: see
triton_guard/defaults.py). The canary backend (backends/canary/model.py)
adds what only pb_utils can reach. No Triton import.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request

from triton_guard import defaults, promtext


class HttpServer:
    """The server facts that come over Triton's own HTTP endpoints (no Triton import)."""

    def __init__(self, http_url: str | None, metrics_url: str | None) -> None:
        self.http_url = http_url
        self.metrics_url = metrics_url

    def fetch_metrics(self, timeout_s: float) -> list[promtext.Sample]:
        if not self.metrics_url:
            raise RuntimeError(f"no metrics URL (set {defaults.METRICS_URL_ENV})")
        return promtext.fetch(self.metrics_url, timeout_s)

    def _http(self, path: str, timeout_s: float, body: bytes | None = None):
        if not self.http_url:
            raise RuntimeError(f"no HTTP URL (set {defaults.HTTP_URL_ENV})")
        # The repository index is a restricted API under `triton-guard serve` (docs/security.md).
        key = os.environ.get(defaults.API_KEY_ENV)
        headers = {defaults.API_KEY_HEADER: key} if key else {}
        request = urllib.request.Request(f"{self.http_url}{path}", data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()

    def model_states(self, timeout_s: float) -> dict[str, tuple[str, str]]:
        """Every model the server has tried to load, from its repository index."""
        _, body = self._http("/v2/repository/index", timeout_s, b"{}")
        states = {}
        for entry in json.loads(body):
            state, reason = entry.get("state") or "", entry.get("reason") or ""
            if state and not (state == "UNAVAILABLE" and reason == "unloaded"):  # unloaded on purpose
                states[entry["name"]] = (state, reason)
        return states

    def model_config(self, model: str, timeout_s: float) -> dict:
        """The model's configuration as the server holds it (JSON): its batching and instances."""
        return json.loads(self._http(f"/v2/models/{urllib.parse.quote(model)}/config", timeout_s)[1])

    def server_version(self) -> str | None:
        try:
            return json.loads(self._http("/v2", 1.0)[1])["version"]
        except Exception:
            return None

    def server_ready(self) -> bool:
        try:
            return self._http("/v2/health/ready", 1.0)[0] == 200
        except Exception:
            return False
