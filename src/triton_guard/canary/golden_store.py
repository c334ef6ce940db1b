"""The canary's golden store: every golden case on disk, loaded for the canary's runs.

`GoldenStore` finds `<repository>/<model>/goldens/*.golden.json` (the format:
canary/goldens.py) in the repositories `repositories_from_environment` names,
loads each case once and again only when its file changes; a file that
cannot be used becomes that model's verdict (its message names the file).
Plain Python (no Triton import).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from triton_guard import defaults
from triton_guard.canary.goldens import GoldenCase, GoldenError, case_files


class GoldenStore:
    """The golden cases of every model in some repositories, re-read when their files change.

    A model's cases are `<repository>/<model>/goldens/*.golden.json`; a file
    that cannot be used is that model's verdict (its message names the file).
    """

    def __init__(self, repositories: list[Path], skip: frozenset[str] = frozenset({defaults.CANARY_MODEL})) -> None:
        self.repositories = [Path(r) for r in repositories]
        self.skip = skip
        self._cache: dict[Path, tuple[tuple[int, int], GoldenCase | str]] = {}

    def cases(self) -> dict[str, list[GoldenCase] | str]:
        found: dict[str, list[GoldenCase] | str] = {}
        for repository in self.repositories:
            try:
                model_dirs = sorted(p for p in repository.iterdir() if p.is_dir())
            except OSError:
                continue
            for model_dir in model_dirs:
                if model_dir.name in self.skip or model_dir.name in found:
                    continue
                files = case_files(model_dir)
                if not files:
                    continue
                loaded = [self._load(path) for path in files]
                errors = [c for c in loaded if isinstance(c, str)]
                found[model_dir.name] = errors[0] if errors else loaded
        return found

    def _load(self, path: Path) -> GoldenCase | str:
        try:
            stat = path.stat()
        except OSError as exc:
            return f"{path}: {exc.strerror}"
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            case: GoldenCase | str = GoldenCase.load(path)
            if case.model != path.parent.parent.name:
                case = f"{path}: recorded for model '{case.model}', lives in '{path.parent.parent.name}'"
        except GoldenError as exc:
            case = str(exc)
        self._cache[path] = (key, case)
        return case


def repositories_from_environment(environ: Mapping[str, str], canary_model_dir: Path) -> list[Path]:
    """Where goldens are looked for: MODEL_REPOSITORIES_ENV, then the canary's own repository."""
    listed = [Path(p).resolve() for p in environ.get(defaults.MODEL_REPOSITORIES_ENV, "").split(os.pathsep) if p]
    own = Path(canary_model_dir).resolve().parent
    return listed + ([own] if own not in listed else [])
