"""The `chaos` control model: validates a command and writes the control file.

The target model's hook (triton_guard.chaos.hook.ChaosHook) reads that file.
A bad command, an unknown model or one without a hook is refused with
INVALID_ARG and a message saying why; nothing is written then.
"""

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard import defaults
from triton_guard.chaos.command import ChaosCommand
from triton_guard.chaos.protocol import ChaosControl, FaultError


def _refuse(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    def initialize(self, args):
        directory = os.environ.get(defaults.CHAOS_DIR_ENV)
        if not directory:
            raise pb_utils.TritonModelException(
                f"chaos model: ${defaults.CHAOS_DIR_ENV} is not set; "
                "it is served only by `triton-guard serve --chaos`"
            )
        self.control = ChaosControl(directory)

    def execute(self, requests):
        return [self._handle(request) for request in requests]

    def _handle(self, request):
        command = pb_utils.get_input_tensor_by_name(request, "COMMAND").as_numpy().reshape(-1)
        try:
            command = ChaosCommand.from_json(command[0], set_at=time.time())
        except FaultError as exc:
            return _refuse(f"chaos: {exc}")
        if not pb_utils.is_model_ready(command.model):
            return _refuse(f"chaos: model '{command.model}' is not loaded and ready on this server")
        hooked = self.control.hooked_models()
        if command.model not in hooked:
            return _refuse(
                f"chaos: model '{command.model}' takes no faults (it has no chaos hook); "
                f"models that do: {', '.join(hooked) or 'none'}"
            )
        if command.fault is None:
            previous = self.control.clear(command.model)
        else:
            try:
                previous = self.control.read(command.model)
            except FaultError:
                previous = None  # overwritten below
            self.control.write(command.model, command.fault)
        status = {
            "model": command.model,
            "fault": command.fault.to_dict() if command.fault else None,
            "previous": previous.to_dict() if previous else None,
        }
        return pb_utils.InferenceResponse(
            [pb_utils.Tensor("STATUS", np.array([json.dumps(status).encode()], dtype=np.object_))]
        )
