"""The changes a placement makes to a repository: applied all or nothing, and recorded for `unguard`.

A placement plans its changes (folders made, files written or rewritten,
folders renamed, `goldens/` and `drift/` carried along), then `apply` makes
them; if one fails, those already made are undone and nothing is left
changed. The record goes beside the guard, in `RECORD_DIR` inside the
directory clients call: Triton takes every folder of a repository for a
model and every numbered folder of a model for a version, so the record is
a non-numbered folder inside a model's directory (named to sort after the
version folders: in a model with no config.pbtxt, Triton 2.51 fails to find
the backend when a folder sorts before them). It holds `guarded.json` (what
was done, in order, with the sha256 of every file written) and the original
bytes of every file rewritten, under `originals/`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from triton_guard.files import write_bytes
from triton_guard.guard_writer.common import GuardRefused, Written

RECORD_DIR = "triton-guard"
RECORD_FILE = "guarded.json"
ORIGINALS = "originals"
RECORD_FORMAT = 1
# Data triton-guard keeps beside a model, about the name clients call: it
# follows that name when the model moves (the canary checks goldens by the
# folder they are in).
CARRIED = ("goldens", "drift")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_of(model_dir: Path) -> dict | None:
    """The record of the guard at `model_dir`, or None; an unreadable one is refused naming the file."""
    path = Path(model_dir) / RECORD_DIR / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("format") != RECORD_FORMAT or not isinstance(record.get("steps"), list):
            raise ValueError(f"not a format-{RECORD_FORMAT} record")
    except (OSError, ValueError) as exc:
        raise GuardRefused(f"{path}: unreadable ({exc})") from None
    return record


@dataclass
class Changes:
    """A placement's planned changes, relative to the repository; `apply` makes them and writes the record."""

    repository: Path
    model: str
    placement: str
    record_dir: str  # relative: where the record goes (inside the directory clients call)
    steps: list[dict] = field(default_factory=list)
    undo_server_steps: list[tuple[str, str]] = field(default_factory=list)  # what a server does after unguard
    _texts: dict[str, bytes] = field(default_factory=dict)

    def mkdir(self, path: str) -> None:
        self.steps.append({"op": "mkdir", "path": path})

    def write(self, path: str, text: str) -> None:
        """Create or rewrite `path` (as it is when this step runs: after the renames before it)."""
        self.steps.append({"op": "write", "path": path})
        self._texts[path] = text.encode("utf-8")

    def rename(self, source: str, target: str) -> None:
        self.steps.append({"op": "rename", "from": source, "to": target})

    def carry(self, source: str, target: str) -> None:
        """Move the CARRIED folders of `source` (those it has) into `target`."""
        self.steps.append({"op": "carry", "from": source, "to": target, "names": list(CARRIED)})

    def apply(self, command: str) -> None:
        """Make every change, then write the record; on any failure undo what was made (GuardRefused)."""
        root = Path(self.repository)
        undo: list = []
        originals: dict[str, tuple[bytes, int]] = {}
        try:
            for step in self.steps:
                self._apply(root, step, undo, originals)
            self._write_record(root, command, originals, undo)
        except OSError as exc:
            for action in reversed(undo):
                try:
                    action()
                except OSError:
                    pass
            where = exc.filename or self.repository
            raise GuardRefused(f"cannot write {where}: {exc.strerror}; nothing was changed") from None

    def _apply(self, root: Path, step: dict, undo: list, originals: dict) -> None:
        op = step["op"]
        if op == "mkdir":
            path = root / step["path"]
            path.mkdir()
            undo.append(path.rmdir)
        elif op == "write":
            path = root / step["path"]
            data = self._texts[step["path"]]
            if path.exists():
                original, mode = path.read_bytes(), path.stat().st_mode & 0o7777
                originals[step["path"]] = (original, mode)
                write_bytes(path, data, mode)
                undo.append(lambda p=path, o=original, m=mode: write_bytes(p, o, m))
            else:
                write_bytes(path, data)
                undo.append(path.unlink)
            step["sha256"] = sha256(data)
        elif op == "rename":
            source, target = root / step["from"], root / step["to"]
            if target.exists():
                raise FileExistsError(17, "already exists", str(target))
            source.rename(target)
            undo.append(lambda s=source, t=target: t.rename(s))
        elif op == "carry":
            source, target = root / step["from"], root / step["to"]
            moved = [name for name in step["names"] if (source / name).is_dir()]
            for name in moved:
                (source / name).rename(target / name)
                undo.append(lambda s=source / name, t=target / name: t.rename(s))
            step["moved"] = moved

    def _write_record(self, root: Path, command: str, originals: dict, undo: list) -> None:
        record_dir = root / self.record_dir
        record_dir.mkdir()
        undo.append(lambda: shutil.rmtree(record_dir, ignore_errors=True))
        for index, step in enumerate(self.steps):
            if step["op"] != "write":
                continue
            if step["path"] in originals:
                data, mode = originals[step["path"]]
                kept = f"{ORIGINALS}/{index}-{Path(step['path']).name}"
                (record_dir / ORIGINALS).mkdir(exist_ok=True)
                (record_dir / kept).write_bytes(data)
                step.update(original=kept, original_sha256=sha256(data), mode=mode)
            else:
                step["original"] = None  # the file did not exist: unguard removes it
        record = {
            "format": RECORD_FORMAT,
            "model": self.model,
            "placement": self.placement,
            "command": command,
            "record_dir": self.record_dir,
            "steps": self.steps,
            "undo_server_steps": [list(step) for step in self.undo_server_steps],
        }
        (record_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")


@dataclass
class Plan:
    """A placement for one model, planned: the changes, what to tell a person, and what a server must do."""

    changes: Changes
    written: Written
    undo_server_steps: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, command: str) -> Written:
        self.changes.undo_server_steps = self.undo_server_steps
        self.changes.apply(command)
        return self.written
