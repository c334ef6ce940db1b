"""`triton-guard guard --all`: every model of a repository guarded with the placement that fits it, or skipped with why.

A Python model is guarded in-process (no extra hop); a model of any other
backend by the renaming placement (clients keep its name). Skipped, with the
reason: the canary, models already guarded (and the models their guards
call), ensembles (clients keep calling them; their steps are guarded by
name), decoupled and stateful models, and models whose config neither the
repository nor the server can say. Every model is planned before any is
written; `--dry-run` prints the same table and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from triton_guard import defaults, model_source
from triton_guard.guard_writer.changes import Plan
from triton_guard.guard_writer.common import (
    ENSEMBLE_PLATFORM,
    GUARD_BACKEND,
    IN_PROCESS,
    PYTHON_BACKEND,
    RENAMED,
    UNGUARDED_SUFFIX,
    UPSTREAM_PARAMETER,
    GuardRefused,
    Server,
    check_repository,
    checked_params,
    guarded_by,
    model_dirs,
    unguardable,
)
from triton_guard.guard_writer.in_process import plan_in_process
from triton_guard.guard_writer.renamed import plan_renamed
from triton_guard.model_config import ModelConfigError


@dataclass
class Row:
    """One model's line of the table."""

    model: str
    backend: str = ""
    config_from: str = ""  # "config.pbtxt" or "server"
    placement: str = ""  # empty: skipped
    note: str = ""  # why skipped, or what the placement does
    plan: Plan | None = None
    failed: str = ""  # the write failed (nothing of this model changed)

    @property
    def guarded(self) -> bool:
        return self.plan is not None and not self.failed


def _skip(row: Row, why: str) -> Row:
    row.note = why
    return row


def plan_row(repository: Path, model: str, params: Mapping[str, str], server: Server, command: str) -> Row:
    row = Row(model)
    if model == defaults.CANARY_MODEL:
        return _skip(row, "the canary (it checks the guards)")
    try:
        already = guarded_by(repository, model)
        if already:
            return _skip(row, already)
        source = model_source.resolve(repository, model, server.fetch, server.url)
    except (GuardRefused, ModelConfigError) as exc:
        return _skip(row, str(exc))
    config = source.config
    row.backend = config.backend or config.platform or "?"
    row.config_from = "server" if source.from_server else "config.pbtxt"
    if config.backend == GUARD_BACKEND:
        upstream = config.parameters[UPSTREAM_PARAMETER].string_value if UPSTREAM_PARAMETER in config.parameters else ""
        return _skip(row, f"a guard (of '{upstream}')" if upstream else "already guarded (in-process)")
    if config.platform == ENSEMBLE_PLATFORM:
        return _skip(row, "an ensemble: clients keep calling it, its steps are guarded under their own names")
    if config.backend == defaults.CANARY_MODEL:
        return _skip(row, "the canary (it checks the guards)")
    reason = unguardable(config)
    if reason:
        return _skip(row, reason.split(":")[0])
    placement = IN_PROCESS if config.backend == PYTHON_BACKEND else RENAMED
    try:
        if placement == IN_PROCESS:
            row.plan = plan_in_process(repository, model, params, server, command)
        else:
            row.plan = plan_renamed(repository, model, params, server, command)
    except GuardRefused as exc:
        return _skip(row, str(exc))
    row.placement = placement
    row.note = (
        "its model.py runs behind the guard" if placement == IN_PROCESS
        else f"the guard is '{model}', the model '{row.plan.written.server_steps[0][1]}'"
    )
    return row


def plan_all(repository: Path, params: Mapping[str, str], server: Server, command: str) -> list[Row]:
    """One row per folder Triton takes for a model; GuardRefused for a bad repository or parameter."""
    repository = Path(repository)
    check_repository(repository)
    params = checked_params(params)
    return [plan_row(repository, d.name, params, server, command) for d in model_dirs(repository)]


def apply_all(rows: list[Row], command: str) -> None:
    """Write every planned guard; a failed one is noted on its row (its model left as it was)."""
    for row in rows:
        if row.plan is not None:
            try:
                row.plan.apply(command)
            except GuardRefused as exc:
                row.failed = str(exc)


def table(rows: list[Row], dry_run: bool) -> list[str]:
    """The table a person reads: model, backend, where its config came from, what was (or would be) done."""
    header = ("MODEL", "BACKEND", "CONFIG FROM", "RESULT")
    lines = []
    for row in rows:
        if row.failed:
            result = f"failed: {row.failed}"
        elif row.plan is not None:
            result = f"{'would guard' if dry_run else 'guarded'} {row.placement}: {row.note}"
        else:
            result = f"skipped: {row.note}"
        lines.append((row.model, row.backend or "-", row.config_from or "-", result))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(3)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in [header, *lines]]


def summary(rows: list[Row], dry_run: bool, server: Server) -> list[str]:
    guarded = [r for r in rows if r.guarded]
    skipped = [r for r in rows if r.plan is None]
    failed = [r for r in rows if r.failed]
    said = [
        f"{len(guarded)} {'to guard' if dry_run else 'guarded'}, {len(skipped)} skipped"
        + (f", {len(failed)} failed (each left as it was)" if failed else "")
    ]
    if any(r.config_from == "server" for r in rows):
        said.append(f"CONFIG FROM server: no config.pbtxt declares the model's tensors (Triton completes them at load): "
                    f"asked the server at {server.url}")
    if dry_run:
        said.append("dry run: nothing written")
    return said


def server_steps(rows: list[Row]) -> list[tuple[str, str]]:
    """What a running server must load, in order: every model that moved before the guards that take its name."""
    steps = [step for r in rows if r.guarded for step in r.plan.written.server_steps]
    moved = [s for s in steps if s[1].endswith(UNGUARDED_SUFFIX)]
    return moved + [s for s in steps if s not in moved]
