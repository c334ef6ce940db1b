"""`triton-guard guard` and `unguard`: put a guard in front of a model of any repository, and take it away again.

Three placements (docs/guarding.md):

* a guard model of its own, `DIR/MODEL_guard`, that clients (or an
  ensemble, rerouted) call instead (guard_model.py);
* renamed: the guard takes MODEL's name and MODEL moves to
  `MODEL_unguarded`, so clients keep calling MODEL, whatever its backend
  (renamed.py);
* in-process: a Python MODEL's own config says `backend: "guard"`
  (in_process.py).

`guard --all` picks the placement per model (whole.py). Every placement is
planned and checked before anything is written, applied all or nothing, and
recorded beside the guard (changes.py), so `unguard` restores the repository
byte for byte (undo.py). A model's config comes from its config.pbtxt, or
from the running server when the file does not declare it (common.py).
"""

from triton_guard.guard_writer.common import RENAMED, GuardRefused, Server, example_request, parse_params
from triton_guard.guard_writer.guard_model import plan_guard_model, write_guard
from triton_guard.guard_writer.in_process import plan_in_process, write_in_process
from triton_guard.guard_writer.renamed import plan_renamed, write_renamed
from triton_guard.guard_writer.undo import unguard
from triton_guard.guard_writer.whole import apply_all, plan_all, server_steps, summary, table

__all__ = [
    "RENAMED",
    "GuardRefused",
    "Server",
    "apply_all",
    "example_request",
    "parse_params",
    "plan_all",
    "plan_guard_model",
    "plan_in_process",
    "plan_renamed",
    "server_steps",
    "summary",
    "table",
    "unguard",
    "write_guard",
    "write_in_process",
    "write_renamed",
]
