"""Micro-benchmark: the adapters' own share of an execute, piece by piece, on a stand-in pb_utils.

    .venv/bin/python scripts/bench_adapters.py [--calls 3000] [--rounds 5] [--requests 8]
        [--against REV]

One execute of `--requests` requests (PIXELS [1, 64] and an arrival stamp
each), outside Triton: the backends run on triton_guard.backends.stand_in,
the model is a trivial one (PROBS [1, 10] from its input), the guard step's
BLS upstream answers at once. Whole executes:

  model alone        the model's own execute: what an unguarded stub pays
  in-process         InProcessGuard.execute (the guard, the drift tap on PROBS, the checks)
  guard step         the `guard` backend's execute (inputs gathered, one BLS call, responses built)
  library call       GuardedUpstream.infer for the whole batch (preprocess_guarded's call)

and the pieces of the in-process execute (this checkout only):

  arrival stamps     reading each request's GUARD_ARRIVED_NS
  guard work         Guard.call_requests around a call that returns at once (hand-off included)
  hand-off           the trip to a bulkhead worker alone
  open answers       each answer's outputs by name (for the checks and the drift tap)
  non-finite         the NaN/inf check of the batch
  drift tap          the drift monitor's copy of the answers into its window
  metrics            the request path's metric events (one per execute)

CPU time (time.process_time: every thread, kernel included) per execute,
median over rounds in rotated order, load average printed. The stand-in's
objects are plain Python, cheaper than the stub's C++ bindings: these figures
follow the Python side of an execute piece by piece; a profile of a real
stub (py-spy) gives the bindings' share. `--against REV` measures the whole
executes of another git revision's src/ in the same run (its backends on this
checkout's stand-in), alternating round by round.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_guard_path import bench_arguments, load_line, measure_rounds  # noqa: E402  (this directory: the rounds harness)

REPO_ROOT = Path(__file__).resolve().parents[1]
STAND_IN = REPO_ROOT / "src" / "triton_guard" / "backends" / "stand_in.py"
REFERENCE = REPO_ROOT / "model_repository" / "classifier" / "drift" / "PROBS.json"
WHOLE = ("model alone", "in-process", "guard step", "library call")
PIECES = ("arrival stamps", "guard work", "hand-off", "open answers", "non-finite", "drift tap", "metrics")

MODEL_PY = '''
import numpy as np
import triton_python_backend_utils as pb_utils

WEIGHTS = np.linspace(-1, 1, 640, dtype=np.float32).reshape(64, 10)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS").as_numpy()
            logits = pixels @ WEIGHTS
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBS", probs / probs.sum(axis=1, keepdims=True))]))
        return responses
'''


# --- inside one measuring process ----------------------------------------------------------------


def _install_stand_in():
    """This checkout's stand-in as triton_python_backend_utils, whichever revision's backends import it."""
    spec = importlib.util.spec_from_file_location("triton_guard_bench_stand_in", STAND_IN)
    stand_in = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = stand_in
    spec.loader.exec_module(stand_in)
    pb = stand_in._module()
    sys.modules[stand_in.MODULE] = pb
    return pb


def _config(name: str, parameters: dict, inputs, outputs, max_batch_size: int = 64) -> str:
    return json.dumps({"name": name, "max_batch_size": max_batch_size, "input": inputs, "output": outputs,
                       "parameters": {k: {"string_value": v} for k, v in parameters.items()}})  # fmt: skip


def _measure(order: list[str], calls: int, n: int, tmp: str) -> dict[str, float]:
    import numpy as np

    os.environ["TRITON_GUARD_STATE_DIR"] = os.path.join(tmp, "state")
    pb = _install_stand_in()
    from triton_guard.backends.bls import GuardedUpstream
    from triton_guard.backends.guard import in_process
    from triton_guard.backends.guard import model as guard_backend

    arrived = time.monotonic_ns()
    pixels = [np.full((1, 64), i / 8, np.float32) for i in range(n)]
    requests = [pb.InferenceRequest("m", [pb.Tensor("PIXELS", p), pb.Tensor("GUARD_ARRIVED_NS", np.array([[arrived]]))],
                                    ["PROBS"]) for p in pixels]  # fmt: skip
    version = Path(tmp, "m", "1")
    version.mkdir(parents=True)
    (version / "model.py").write_text(MODEL_PY)
    io = ([{"name": "PIXELS", "data_type": "TYPE_FP32", "dims": ["64"]},
           {"name": "GUARD_ARRIVED_NS", "data_type": "TYPE_INT64", "dims": ["1"], "optional": True}],
          [{"name": "PROBS", "data_type": "TYPE_FP32", "dims": ["10"]}])  # fmt: skip
    drift = {"drift_output": "PROBS", "drift_kind": "probs", "drift_reference": str(REFERENCE), "probe_interval_ms": "0"}
    args = {"model_config": _config("m", drift, *io), "model_repository": str(Path(tmp, "m")), "model_version": "1",
            "model_instance_name": "m_0_0"}  # fmt: skip
    guarded = in_process.InProcessGuard(args, in_process.own_model_file(args))
    model = guarded.model

    def upstream(request):
        x = pb.get_input_tensor_by_name(request, "PIXELS").as_numpy()
        return pb.InferenceResponse([pb.Tensor("PROBS", np.repeat(np.full((1, 10), 0.1, np.float32), len(x), axis=0))])

    pb.bls_handler = upstream
    step = guard_backend.TritonPythonModel()
    step_config = _config("m_guard", {"upstream_model": "up", "probe_interval_ms": "0"}, *io)
    up_dir = Path(tmp, "up")
    up_dir.mkdir()
    (up_dir / "config.pbtxt").write_text('name: "up"\nbackend: "python"\nmax_batch_size: 64\n'
                                         'input [{ name: "PIXELS", data_type: TYPE_FP32, dims: [64] }]\n'
                                         'output [{ name: "PROBS", data_type: TYPE_FP32, dims: [10] }]\n')  # fmt: skip
    (Path(tmp, "m_guard")).mkdir()
    step.initialize({"model_config": step_config, "model_repository": str(Path(tmp, "m_guard")), "model_version": "1",
                     "model_instance_name": "m_guard_0_0"})  # fmt: skip
    library = GuardedUpstream("up", instance_name="lib_0_0", upstream_batches=True, probe_interval_ms="0")
    batch = {"PIXELS": np.concatenate(pixels)}

    work = {
        "model alone": lambda: model.execute(requests),
        "in-process": lambda: guarded.execute(requests),
        "guard step": lambda: step.execute(requests),
        "library call": lambda: library.infer(batch, ["PROBS"], requests=n),
    }
    if hasattr(guarded, "runtime"):  # this checkout: the pieces too
        work.update(_pieces(guarded, model, requests, n))
    results = {}
    for row in order:
        if row in work:
            results[row] = _per_call(work[row], calls)
    for closable in (guarded.finalize, step.finalize, library.close):
        closable()
    return results


def _pieces(guarded, model, requests, n):
    from triton_guard.backends.guard import in_process
    from triton_guard.backends.runtime import arrival_s
    from triton_guard.guard.finite import non_finite_in_batch

    runtime, answers = guarded.runtime, model.execute(requests)
    outputs = in_process.opened_answers(answers)[1]
    arrivals = [arrival_s(r) for r in requests]
    workers = runtime.guard.workers

    def hand_off():
        workers.run(workers.take(), lambda: answers, 10.0)

    return {
        "arrival stamps": lambda: [arrival_s(r) for r in requests],
        "guard work": lambda: runtime.guard.call_requests(arrivals, lambda indices, t: answers),
        "hand-off": hand_off,
        "open answers": lambda: in_process.opened_answers(answers),
        "non-finite": lambda: non_finite_in_batch(outputs),
        "drift tap": lambda: runtime.drift.observe_per_request(outputs, requests),
        "metrics": lambda: runtime.events.completed(0.0001, None, n),
    }


def _per_call(fn, calls: int) -> float:
    for _ in range(min(300, calls)):
        fn()
    cpu = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - cpu) / calls * 1e6


# --- the parent ----------------------------------------------------------------------------------------


def main() -> int:
    args = bench_arguments(__doc__, 3000, "executes per row per round", "also measure this git revision's whole executes")
    if args.child:
        spec = json.loads(args.child)
        with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
            print(json.dumps(_measure(spec["order"], spec["calls"], spec["requests"], tmp)))
        return 0

    rows = WHOLE + PIECES
    load_start = os.getloadavg()
    labels, samples = measure_rounds(__file__, rows, args.against, args.rounds, {"calls": args.calls, "requests": args.requests})
    load_end = os.getloadavg()

    print(f"The adapters' share of an execute of {args.requests} requests (stand-in pb_utils); CPU us per execute, "
          f"median (min-max) of {args.rounds} rounds of {args.calls}, rotated.")  # fmt: skip
    print(load_line(load_start, load_end))
    print(f"{'':16s}" + "".join(f"{label:>28s}" for label in labels))
    medians = {}
    for row in rows:
        line = f"{row:16s}"
        for label in labels:
            values = samples[label, row]
            if not values:
                line += f"{'—':>28s}"
                continue
            medians[label, row] = statistics.median(values)
            line += f"{statistics.median(values):>12.2f} ({min(values):6.1f}-{max(values):6.1f})"
        print(line)
        if row == WHOLE[-1]:
            print(f"{'  pieces of in-process:':16s}")
    print()
    for label in labels:
        if (label, "in-process") in medians:
            added = medians[label, "in-process"] - medians[label, "model alone"]
            print(f"{label}: in-process execute minus the model alone: {added:.1f} us CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
