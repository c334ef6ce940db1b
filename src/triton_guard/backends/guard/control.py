"""The `guard_control` model: an operator's override of a breaker, over the network, with the API key.

A model whose config says `backend: "guard"` and `role: control` (the one
`serve` adds: triton_guard/guard/repository/guard_control) is served by this
adapter. Each request carries an OverrideCommand (triton_guard.guard.override)
as JSON; the key must be the server's API key (the one of the restricted
APIs), checked here since inference requests are not restricted by Triton.
The breakers live in the server's state directory, on the server's host:
this model is how a command from anywhere reaches them. A refused command
answers INVALID_ARG (bad command, wrong key) or NOT_FOUND (no such breaker)
and changes nothing.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_guard.guard import override
from triton_guard.guard.shared_state import SharedFileStore, read_claim
from triton_guard.guard.state_dir import default_state_dir
from triton_guard.server.auth import api_key_matches


class ControlModel:
    def __init__(self, args) -> None:
        self.store = SharedFileStore(default_state_dir(), report=pb_utils.Logger.log_warn)

    def execute(self, requests):
        return [self._handle(request) for request in requests]

    def _handle(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, "COMMAND").as_numpy().reshape(-1)[0]
        try:
            command = override.OverrideCommand.from_json(raw)
            if not api_key_matches(command.key):
                raise override.OverrideError("the API key is missing or wrong (the key of the server's restricted APIs)")
        except override.OverrideError as exc:
            return _refused(str(exc), pb_utils.TritonError.INVALID_ARG)
        try:
            known = self.store.list_breakers()
            result = override.apply(command, self.store, known, read_claim(self.store.directory, command.model))
        except override.OverrideError as exc:
            return _refused(str(exc), pb_utils.TritonError.NOT_FOUND)
        pb_utils.Logger.log_warn(f"guard: {override.describe(result)}")
        state = np.array([json.dumps(result).encode()], dtype=np.object_)
        return pb_utils.InferenceResponse([pb_utils.Tensor("STATE", state)])


def _refused(message: str, code) -> object:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"breaker override refused: {message}", code))
