"""`triton-guard unguard MODEL`: undo what `guard` did to a repository, byte for byte.

Reads the record `guard` left beside the guard (changes.RECORD_DIR), checks
that the repository is still as `guard` left it (every file it wrote has the
sha256 it had, no file was added to a folder it made, a renamed folder is
where it put it), then undoes the steps in reverse order: rewritten files
get their original bytes (comments included) and mode back, files and
folders it made go, renamed folders get their names back, and `goldens/` and
`drift/` follow the model's name back. Anything changed by hand since: one
line naming it, and nothing is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from triton_guard.files import write_bytes
from triton_guard.guard_writer.changes import RECORD_DIR, RECORD_FILE, record_of, sha256
from triton_guard.guard_writer.common import GUARD_SUFFIX, GuardRefused, Written, check_repository


def find_record(repository: Path, model: str) -> tuple[Path, dict]:
    """(record folder, record) of MODEL's guard: in MODEL's own folder (in-process, renamed) or MODEL_guard's."""
    for folder in (model, model + GUARD_SUFFIX):
        record = record_of(Path(repository) / folder)
        if record is not None and record.get("model") == model:
            return Path(repository) / folder / RECORD_DIR, record
    raise GuardRefused(
        f"no guard of '{model}' written by `triton-guard guard` in {repository} "
        f"(no {model}/{RECORD_DIR}/{RECORD_FILE}, no {model + GUARD_SUFFIX}/{RECORD_DIR}/{RECORD_FILE})"
    )


def unguard(repository: Path, model: str) -> Written:
    """Undo MODEL's guard; GuardRefused (one line, nothing written) when the repository changed since."""
    repository = Path(repository)
    check_repository(repository)
    record_dir, record = find_record(repository, model)
    originals = _verify(repository, record, record_dir)
    written = Written(model, record["placement"])
    written.wrote = _undo(repository, record, record_dir, originals)
    written.server_steps = [tuple(step) for step in record.get("undo_server_steps", [])]
    written.call.append(f"'{model}' is as it was before `{record['command']}`")
    return written


def _changed(path: Path, what: str, record_dir: Path) -> GuardRefused:
    return GuardRefused(
        f"{path} {what} since `triton-guard guard` wrote it: nothing restored "
        f"(what guard changed is listed in {record_dir / RECORD_FILE}; undo it by hand, or put it back first)"
    )


def _verify(root: Path, record: dict, record_dir: Path) -> dict[str, bytes]:
    """Raise GuardRefused when the repository is not as `guard` left it; the originals to restore."""
    steps = record["steps"]
    originals: dict[str, bytes] = {}
    made = {step["path"] for step in steps if step["op"] in ("mkdir", "write")}
    carried = {f"{step['to']}/{name}" for step in steps if step["op"] == "carry" for name in step["names"]}
    for step in steps:
        op = step["op"]
        if op == "write":
            path = root / step["path"]
            if not path.is_file():
                raise _changed(path, "was removed", record_dir)
            if sha256(path.read_bytes()) != step["sha256"]:
                raise _changed(path, "was changed", record_dir)
            if step.get("original"):
                kept = record_dir / step["original"]
                data = kept.read_bytes() if kept.is_file() else None
                if data is None or sha256(data) != step["original_sha256"]:
                    raise GuardRefused(f"{kept}: the original kept by `triton-guard guard` is missing or damaged: nothing restored")
                originals[step["path"]] = data
        elif op == "rename":
            if not (root / step["to"]).is_dir():
                raise _changed(root / step["to"], "was moved or removed", record_dir)
            if (root / step["from"]).exists() and step["from"] not in made:
                raise _changed(root / step["from"], "was made", record_dir)
        elif op == "carry":
            for name in step["names"]:
                if (root / step["to"] / name).exists() and (root / step["from"] / name).exists():
                    raise GuardRefused(
                        f"both {root / step['to'] / name} and {root / step['from'] / name} exist: "
                        "merge them by hand first (nothing restored)"
                    )
    for step in steps:
        if step["op"] != "mkdir":
            continue
        for path in sorted((root / step["path"]).rglob("*")):
            relative = path.relative_to(root).as_posix()
            ours = (
                relative in made
                or path == record_dir or record_dir in path.parents
                or any(relative == c or relative.startswith(c + "/") for c in carried)
            )
            if not ours:
                raise GuardRefused(
                    f"{path} was added since `triton-guard guard` made {root / step['path']}: "
                    "move it away first (nothing restored)"
                )
    return originals


def _undo(root: Path, record: dict, record_dir: Path, originals: dict[str, bytes]) -> list[str]:
    said: list[str] = []
    for step in reversed(record["steps"]):
        op = step["op"]
        if op == "write":
            path = root / step["path"]
            if step.get("original"):
                write_bytes(path, originals[step["path"]], step.get("mode"))
                said.append(f"restored {path} (its bytes before guard)")
            else:
                path.unlink()
                said.append(f"removed {path}")
        elif op == "mkdir":
            path = root / step["path"]
            if record_dir.parent == path:
                shutil.rmtree(record_dir)
            path.rmdir()
            said.append(f"removed {path}/")
        elif op == "rename":
            (root / step["to"]).rename(root / step["from"])
            said.append(f"renamed {root / step['to']} back to {root / step['from']}")
        elif op == "carry":
            for name in step["names"]:
                if (root / step["to"] / name).is_dir():
                    (root / step["to"] / name).rename(root / step["from"] / name)
                    said.append(f"moved {root / step['to'] / name} back to {root / step['from'] / name}")
    if record_dir.exists():
        shutil.rmtree(record_dir)
    return said
