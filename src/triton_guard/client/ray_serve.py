"""Ray Serve in front of Triton: requests through GuardedClient, check_health through the canary.

Needs `ray[serve]`. Run it on its own::

    serve run triton_guard.client.ray_serve:app_builder url=127.0.0.1:8001 model=pipeline timeout_ms=2000

or bind `TritonGuardDeployment` into an application of your own. Every builder
argument is a string (that is what `serve run key=value` passes):

  url, model                Triton's gRPC address and the model to forward to
  any GuardConfig key       timeout_ms, failure_threshold, recovery_ms, half_open_max_calls,
                            max_inflight, window_size, ... (the in-server guard's parameters)
  client_error_pattern      regex for your model's own bad-input messages (never counted)
  health_timeout_s          the canary call's deadline
  canary_model, canary_options (JSON)
  health_check_period_s, health_check_timeout_s, max_ongoing_requests, max_queued_requests
                            Ray Serve's deployment options

A request is a KServe v2 JSON body (`{"inputs": [{"name", "shape",
"datatype", "data"}], "outputs": [{"name"}]}`); the answer is the same shape
with `outputs`, or `{"error", "code"}` with the HTTP status of the guard's
error (400 for the caller's mistakes, 503 while open, timed out or unreachable).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from triton_guard import defaults
from triton_guard.client.guard import ClientGuardError, GuardedClient
from triton_guard.client.health import CanaryHealthCheck
from triton_guard.guard.config import ConfigError, GuardConfig
from triton_guard.inputs import InputsError, kserve_body_inputs, triton_datatype

_DEPLOYMENT_KEYS = ("health_check_period_s", "health_check_timeout_s", "max_ongoing_requests", "max_queued_requests")
_DEPLOYMENT_KEYS_INT = ("max_ongoing_requests", "max_queued_requests")
_OWN_KEYS = ("url", "model", "client_error_pattern", "health_timeout_s", "canary_model", "canary_options", "name")


@serve.deployment(
    health_check_period_s=defaults.RAY_HEALTH_CHECK_PERIOD_S,
    health_check_timeout_s=defaults.RAY_HEALTH_CHECK_TIMEOUT_S,
)
class TritonGuardDeployment:
    def __init__(
        self,
        url: str,
        model: str,
        guard: dict[str, Any] | None = None,
        client_error_pattern: str | None = None,
        health_timeout_s: float = defaults.PROBE_TIMEOUT_S,
        canary_model: str = defaults.CANARY_MODEL,
        canary_options: dict[str, Any] | None = None,
    ) -> None:
        # Nothing connects here: a replica starts (and restarts) while Triton is down.
        self.model = model
        self.client = GuardedClient(url, GuardConfig(**(guard or {})), client_error_pattern=client_error_pattern)
        self.health = CanaryHealthCheck(url, health_timeout_s, canary_model, canary_options)

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            arrays = kserve_body_inputs(body)
        except (ValueError, InputsError) as exc:  # json's errors are ValueErrors too
            return _error(f"bad request body: {exc}", "INVALID_ARGUMENT", 400)
        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), triton_datatype(array))
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        wanted = [o.get("name") for o in body.get("outputs", []) if isinstance(o, dict)]
        outputs = [grpcclient.InferRequestedOutput(name) for name in wanted if name] or None
        try:
            result = await self.client.infer(self.model, inputs, outputs)
        except ClientGuardError as exc:
            return _error(exc.message(), exc.code.name, exc.http_status)
        return JSONResponse({"model_name": self.model, "outputs": _outputs(result)})

    async def check_health(self) -> None:
        """Raises (Ray Serve then replaces the replica) unless the canary says ready."""
        await self.health()


def _error(message: str, code: str, http_status: int) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=http_status)


def _outputs(result) -> list[dict[str, Any]]:
    outputs = []
    for output in result.get_response().outputs:
        array = result.as_numpy(output.name)
        data = array.reshape(-1).tolist()
        if array.dtype == np.object_:
            data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in data]
        outputs.append({"name": output.name, "datatype": output.datatype, "shape": list(array.shape), "data": data})
    return outputs


def deployment_arguments(args: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TritonGuardDeployment's keyword arguments, Ray Serve deployment options) from builder args.

    Raises ValueError naming the argument that is missing, unknown or malformed.
    """
    args = dict(args)
    for key in ("url", "model"):
        if not args.get(key):
            raise ValueError(f"{key}= is required (e.g. url=127.0.0.1:8001 model=pipeline)")
    unknown = set(args) - set(_OWN_KEYS) - set(_DEPLOYMENT_KEYS) - GuardConfig.parameter_names()
    if unknown:
        raise ValueError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    guard_params = {k: str(v) for k, v in args.items() if k in GuardConfig.parameter_names()}
    try:
        config = GuardConfig.from_parameters(guard_params)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    kwargs: dict[str, Any] = {
        "url": args["url"],
        "model": args["model"],
        "guard": config.to_dict(),
        "client_error_pattern": args.get("client_error_pattern") or None,
        "health_timeout_s": _number(args, "health_timeout_s", defaults.PROBE_TIMEOUT_S),
        "canary_model": args.get("canary_model", defaults.CANARY_MODEL),
        "canary_options": None,
    }
    if args.get("canary_options"):
        try:
            kwargs["canary_options"] = json.loads(args["canary_options"])
        except ValueError as exc:
            raise ValueError(f"canary_options={args['canary_options']!r} is not JSON: {exc}") from None
        if not isinstance(kwargs["canary_options"], dict):
            raise ValueError("canary_options must be a JSON object")
    # Ray's own queue is bounded and no deeper than the guard's bulkhead: the
    # incident's orchestrator queued without bound.
    options: dict[str, Any] = {
        "max_ongoing_requests": config.max_inflight,
        "max_queued_requests": config.max_inflight,
    }
    if "name" in args:
        options["name"] = args["name"]
    for key in _DEPLOYMENT_KEYS:
        if key in args:
            options[key] = int(_number(args, key, 0)) if key in _DEPLOYMENT_KEYS_INT else _number(args, key, 0.0)
    return kwargs, options


def _number(args: dict[str, str], key: str, default: float) -> float:
    if key not in args:
        return default
    try:
        value = float(args[key])
    except (TypeError, ValueError):
        raise ValueError(f"{key}={args[key]!r} is not a number") from None
    if not value > 0:
        raise ValueError(f"{key}={args[key]!r} must be positive")
    return value


def app_builder(args: dict[str, str]):
    """The application `serve run triton_guard.client.ray_serve:app_builder key=value ...` starts."""
    kwargs, options = deployment_arguments(args)
    return TritonGuardDeployment.options(**options).bind(**kwargs)
