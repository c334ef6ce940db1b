"""Pure logic of the hardening: the non-finite check and the side healer (no server)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from triton_guard import defaults
from triton_guard.guard.failures import Failure, FailureClassifier
from triton_guard.guard.finite import non_finite_output
from triton_guard.guard.healer import RELOAD_PARAMETER, SideHealer

# --- non-finite outputs ----------------------------------------------------------------------


def test_finite_outputs_pass_and_other_dtypes_are_not_checked():
    assert non_finite_output({"PROBS": np.full((4, 10), 0.1, np.float32), "LABEL": np.arange(4)}) is None
    assert non_finite_output({"EMPTY": np.zeros((0, 10), np.float32)}) is None
    assert non_finite_output({"TEXT": np.array([b"nan"], dtype=object)}) is None


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_names_the_output_and_counts(dtype, bad):
    probs = np.full((4, 10), 0.1, dtype)
    probs[1, 2] = probs[3, 3] = bad
    message = non_finite_output({"LABEL": np.arange(4), "PROBS": probs})
    assert message == "output 'PROBS' holds 2 non-finite value(s) (NaN or inf) of 40"
    assert FailureClassifier().classify(message) is Failure.NON_FINITE
    assert Failure.NON_FINITE.counts_against_upstream


def test_large_finite_values_whose_sum_overflows_are_not_a_failure():
    big = np.full(8, 6e4, np.float16)  # their float16 sum would overflow to inf; every value is finite
    assert non_finite_output({"Y": big}) is None


def test_an_upstream_message_merely_mentioning_nan_is_an_upstream_error():
    assert FailureClassifier().classify("model produced nan, non-finite value(s)") is Failure.UPSTREAM_ERROR


# --- side healer -----------------------------------------------------------------------------


class FakeTriton:
    """The repository API: records load calls; `release` holds one until the test lets it go."""

    def __init__(self, status: int = 200, body: str = "") -> None:
        self.calls = []
        self.status, self.body = status, body
        self.release = threading.Event()
        self.release.set()

    def post(self, url, body, headers, timeout_s):
        if body is None:  # GET of the model's config
            return 200, '{"name": "classifier", "backend": "python"}'
        self.calls.append((url, body, dict(headers), timeout_s))
        self.release.wait(10)
        return self.status, self.body


def healer(tmp_path, triton, now=lambda: 1000.0, key="k" * 20, log=None):
    return SideHealer(
        "classifier", http_url="http://localhost:8000/", api_key=key, min_interval_s=30.0,
        state_dir=str(tmp_path), post=triton.post, clock=now, log=log if log is not None else (lambda _: None),
    )


def test_heal_loads_only_that_model_with_the_key(tmp_path):
    triton = FakeTriton()
    assert healer(tmp_path, triton).heal() == "reloaded"
    (url, body, headers, timeout_s), = triton.calls
    assert url == "http://localhost:8000/v2/repository/models/classifier/load"
    # Its own config plus a stamp as an override: Triton then reloads even a model whose files did not change.
    config = json.loads(json.loads(body)["parameters"]["config"])
    assert config == {"name": "classifier", "backend": "python", "parameters": {RELOAD_PARAMETER: {"string_value": "1000.000000"}}}
    assert headers == {defaults.API_KEY_HEADER: "k" * 20}
    assert timeout_s == defaults.HEAL_HTTP_TIMEOUT_S


def test_request_returns_at_once_while_the_reload_runs_beside_it(tmp_path):
    triton = FakeTriton()
    triton.release.clear()  # the reload takes "forever"
    h = healer(tmp_path, triton)
    assert h.request() is True  # returned although the reload has not finished
    assert h.request() is False  # one reload thread per process at most
    triton.release.set()
    h.thread.join(5)
    assert len(triton.calls) == 1


def test_at_most_one_reload_per_interval_across_healers(tmp_path):
    now = [1000.0]
    triton = FakeTriton()
    first, second = healer(tmp_path, triton, lambda: now[0]), healer(tmp_path, triton, lambda: now[0])
    assert first.heal() == "reloaded"
    assert second.heal() == "skipped"  # another process's stamp, same state directory
    now[0] += 31
    assert second.heal() == "reloaded"
    assert len(triton.calls) == 2


def test_a_refused_reload_is_logged_with_tritons_reason(tmp_path):
    said = []
    triton = FakeTriton(403, '{"error":"This API is restricted, expecting header \'triton-guard-key\'"}')
    assert healer(tmp_path, triton, key=None, log=said.append).heal() == "failed"
    assert triton.calls[0][2] == {}
    assert said[-1] == "guard: reloading 'classifier' failed: HTTP 403: This API is restricted, expecting header 'triton-guard-key'"


def test_an_unreachable_server_is_a_logged_failure_not_an_exception(tmp_path):
    said = []

    def refuse(*_):
        raise ConnectionRefusedError(111, "Connection refused")

    h = SideHealer("classifier", http_url="http://localhost:1", api_key=None, min_interval_s=1, state_dir=str(tmp_path),
                   post=refuse, log=said.append)
    assert h.heal() == "failed" and "ConnectionRefusedError" in said[-1]


# --- the image and the manifests take the key from a Secret -------------------------------------


def test_image_binds_all_interfaces_and_the_deployment_mounts_the_key_from_a_secret():
    import json as _json
    import re as _re
    from pathlib import Path as _Path

    import yaml

    root = _Path(__file__).resolve().parents[2]
    cmd = [_json.loads(line.split(None, 1)[1]) for line in (root / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert cmd[-1][cmd[-1].index("--host") + 1] == "0.0.0.0"
    deployment = yaml.safe_load((root / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    key_file = {e["name"]: e["value"] for e in container["env"]}[defaults.API_KEY_FILE_ENV]
    mount = next(m for m in container["volumeMounts"] if key_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] and mount["readOnly"] is True
    assert _re.fullmatch(r"[\w.-]+", key_file.rsplit("/", 1)[1])


def test_the_interval_counts_from_the_end_of_a_long_reload(tmp_path):
    now = [1000.0]
    triton = FakeTriton()

    def slow_post(*args):
        now[0] += 60  # the reload took a minute, twice the interval
        return triton.post(*args)

    h = SideHealer("classifier", http_url="http://x", api_key=None, min_interval_s=30.0, state_dir=str(tmp_path),
                   post=slow_post, clock=lambda: now[0], log=lambda _: None)
    assert h.heal() == "reloaded"
    now[0] += 10  # a call abandoned during the reload reports the old stub's death now
    assert h.heal() == "skipped"
