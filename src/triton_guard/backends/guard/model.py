"""The `guard` Python-based backend: a circuit breaker in front of another model.

A model whose config says `backend: "guard"` declares the same inputs and
outputs as the model it protects and names it in `parameters`
(`upstream_model`); every threshold is a parameter too (defaults in
triton_guard/defaults.py, validated at load: a bad value fails the load with
a message naming the parameter). Each dynamic batch becomes ONE BLS call to
the upstream (triton_guard.backends.bls.GuardedUpstream), which records one
outcome per request it carried. This file only translates between Triton and
that logic. Two more roles are served by the same backend: a model guarded in
its own process (no upstream_model, a model.py of its own: guard/in_process.py)
and the breakers' control model (`role: control`: guard/control.py).
"""

import json
import sys
from pathlib import Path

# Import the triton_guard this file ships in: Triton's embedded Python ignores
# PYTHONPATH, so a checkout's backend would otherwise run the venv's package.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
if _PACKAGE_ROOT not in sys.path:
    sys.path.insert(0, _PACKAGE_ROOT)

import triton_python_backend_utils as pb_utils  # noqa: E402  (after the path fix above, as the imports below)

from triton_guard import defaults
from triton_guard.backends.bls import GuardedUpstream
from triton_guard.backends.runtime import parameters_of, stamp_s
from triton_guard.guard.config import ConfigError
from triton_guard.model_config import ModelConfigError, check_guard_interface
from triton_guard.backends.guard import control, in_process


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        params = parameters_of(model_config)
        if params.get("role") == "control":
            # The operator's override of the breakers (`triton-guard breaker`): backends/guard/control.py.
            self.execute, self.finalize = control.ControlModel(args).execute, lambda: None
            return
        own_model = in_process.own_model_file(args)
        if own_model is not None:  # no upstream_model, a model.py of its own: guard it in this process
            guarded = in_process.InProcessGuard(args, own_model)
            self.execute, self.finalize = guarded.execute, guarded.finalize
            return
        name = model_config["name"]
        upstream = params.pop("upstream_model", "").strip()
        if not upstream:
            raise pb_utils.TritonModelException(
                f"guard model '{name}': parameter 'upstream_model' is required (the name of the model to guard)"
            )
        try:  # a guard that would fail every call with a shape error fails its load instead
            unchecked = check_guard_interface(args["model_repository"], args["model_config"], upstream)
        except ModelConfigError as exc:
            raise pb_utils.TritonModelException(f"guard model '{name}': {exc}") from None
        if unchecked:
            pb_utils.Logger.log_warn(f"guard model '{name}': {unchecked}")
        try:
            self.upstream = GuardedUpstream(
                upstream,
                instance_name=args["model_instance_name"],
                # Same inputs and batching as the upstream: its requests can be concatenated.
                upstream_batches=model_config.get("max_batch_size", 0) > 0,
                repository=Path(args["model_repository"]).parent,  # resolves a relative drift_reference
                **params,
            )
        except (ConfigError, ValueError) as exc:  # a bad client_error_pattern is a re.error (ValueError)
            raise pb_utils.TritonModelException(f"guard model '{name}': {exc}") from None
        # The arrival stamp is the guard's own input; everything else goes upstream.
        self.input_names = [i["name"] for i in model_config["input"] if i["name"] != defaults.ARRIVAL_INPUT]
        self.output_names = [o["name"] for o in model_config["output"]]
        drift = self.upstream.drift
        if drift is not None and drift.config.output not in self.output_names:
            self.upstream.close()
            raise pb_utils.TritonModelException(
                f"guard model '{name}': drift_output={drift.config.output!r} is not one of its outputs {self.output_names}")

    def execute(self, requests):
        # Deadlines, the expired-before-the-guard rule and the split-batch rule
        # live in triton_guard.guard.core.Guard.call_requests; this only translates.
        inputs, arrivals = [], []
        for request in requests:
            tensors = {t.name(): t for t in request.inputs()}  # one pass over each request's inputs
            inputs.append({name: tensors[name].as_numpy() for name in self.input_names})
            arrivals.append(stamp_s(tensors.get(defaults.ARRIVAL_INPUT)))
        results = self.upstream.infer_requests(inputs, self.output_names, arrivals)
        self.upstream.observe_results(results, requests)  # output drift monitor: a copy of the answers into its window
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(n, result.value[n]) for n in self.output_names])
            if result.ok
            else self.upstream.error_response(result)
            for result in results
        ]

    def finalize(self):
        self.upstream.close()

