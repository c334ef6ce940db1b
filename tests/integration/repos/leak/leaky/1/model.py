"""Y = X in two instances; under `serve --chaos` a leak on command, in one instance or both.

DELAY_MS (optional) holds the execute that long: a request in flight while
the model reloads. MARK (optional) names a file touched when the execute
starts, so a test knows the request is executing.
"""

import json
import time

import triton_python_backend_utils as pb_utils

from triton_guard.chaos.hook import hook_from_environment


def _scalar(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        name = json.loads(args["model_config"])["name"]
        self.chaos = hook_from_environment(name, instance_name=args["model_instance_name"])

    def execute(self, requests):
        responses = []
        for request in requests:
            mark = _scalar(request, "MARK")
            if mark is not None:
                with open(mark.decode() if isinstance(mark, bytes) else mark, "w"):
                    pass
            delay_ms = _scalar(request, "DELAY_MS")
            if delay_ms is not None:
                time.sleep(int(delay_ms) / 1000)
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x.copy())]))
        return responses

    def finalize(self):
        if self.chaos is not None:
            self.chaos.close()
