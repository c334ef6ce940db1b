"""The docs site and the README: the site builds strictly, the README stays a short first screen
naming the commands CI runs, the generated reference lists everything the code holds, and the
docs name only files and modules the repository has."""

from __future__ import annotations

import ast
import dataclasses
import html
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from triton_guard import defaults
from triton_guard.guard.config import DRIFT_PARAMETERS, EXTRA_PARAMETERS, GuardConfig
from triton_guard.metrics import CATALOGUE

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").rglob("*.md"))
CI_RUN = REPO / ".ci" / "run"
SERVE_COMMAND = "bash scripts/setup.sh && .venv/bin/triton-guard serve"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=_env(),
    )
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    return out


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    # The hook imports triton_guard: the same one this test compares against.
    package_root = str(Path(importlib.util.find_spec("triton_guard").origin).parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _rows(page: Path) -> list[str]:
    """Each table row of a built page as plain text (tags dropped, entities decoded)."""
    text = page.read_text(encoding="utf-8")
    return [html.unescape(re.sub(r"<[^>]+>", " ", row)) for row in re.findall(r"<tr>(.*?)</tr>", text, re.S)]


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", REPO / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _row_of(rows: list[str], name: str) -> str:
    """The table row whose first cell is `name`."""
    for row in rows:
        if row.split()[:1] == [name]:
            return row
    raise AssertionError(f"no table row for {name}")


# --- the site ------------------------------------------------------------------------


def test_the_site_builds_strictly_and_has_every_page_of_the_nav(site):
    nav = re.findall(r":\s*([\w./-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(encoding="utf-8"), re.M)
    assert sorted(nav) == sorted(str(p.relative_to(REPO / "docs")) for p in DOCS), "a page outside the nav, or a nav entry without a page"
    for page in nav:
        built = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert built.is_file(), page


def test_a_broken_link_fails_the_build(tmp_path):
    # The strictness the suite relies on: a copy of the docs with one bad anchor must not build.
    import shutil

    for folder in ("docs", "scripts"):  # the pages, and what the hook reads beside them
        shutil.copytree(REPO / folder, tmp_path / folder)
    (tmp_path / "deploy").mkdir()
    for file in ("mkdocs.yml", "deploy/README.md"):
        shutil.copy(REPO / file, tmp_path / file)
    page = tmp_path / "docs" / "getting-started.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[gone](breaker.md#no-such-section)\n", encoding="utf-8")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env=_env(),
    )
    assert built.returncode != 0
    assert "no-such-section" in built.stdout + built.stderr


# --- the README ----------------------------------------------------------------------


def _first_bash_block(path: Path) -> list[str]:
    block = re.search(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
    assert block, f"{path.name}: no bash block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_is_a_first_screen_under_200_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) < 200


def test_readme_gives_the_two_commands_and_the_test_one_is_what_ci_runs():
    ci_commands = [line for line in CI_RUN.read_text(encoding="utf-8").splitlines() if line.startswith("bash scripts/setup.sh")]
    assert len(ci_commands) == 1
    for page in (README, REPO / "docs" / "index.md", REPO / "docs" / "getting-started.md"):
        assert _first_bash_block(page) == [SERVE_COMMAND, ci_commands[0]], page.name


def test_readme_links_point_at_files():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8")):
        if not re.match(r"\w+://", target):
            assert (REPO / target).exists(), target


# --- the generated reference ------------------------------------------------------------


def _value_text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ", ".join(f'"{v}"' for v in value) if value else "()"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def test_every_default_is_in_the_parameter_reference_with_its_value(site):
    rows = _rows(site / "reference" / "parameters" / "index.html")
    constants = [name for name in vars(defaults) if name.isupper()]
    assert len(constants) > 50
    for name in constants:
        row = _row_of(rows, name)
        assert _value_text(getattr(defaults, name)) in row, (name, row)


def test_every_guard_and_canary_parameter_is_in_the_reference(site):
    canary_config = _hook().canary_config_class()  # where the canary's config lives is the hook's to know
    rows = _rows(site / "reference" / "parameters" / "index.html")
    for field in dataclasses.fields(GuardConfig):
        assert _value_text(field.default) in _row_of(rows, field.name), field.name
    for name in ("upstream_model", *EXTRA_PARAMETERS, *DRIFT_PARAMETERS):
        _row_of(rows, name)
    for field in dataclasses.fields(canary_config):
        if field.name.islower():
            _row_of(rows, field.name)


def test_every_metric_family_is_in_the_metrics_reference(site):
    rows = _rows(site / "reference" / "metrics" / "index.html")
    assert len(CATALOGUE) > 10
    for metric in CATALOGUE.values():
        row = _row_of(rows, metric.name)
        assert metric.kind.value in row and metric.publisher.value in row, metric.name
        assert " ".join(metric.help.split()) in " ".join(row.split()), metric.name
        for label, allowed in metric.labels.items():
            assert label in row, (metric.name, label)
            for value in allowed or ():
                assert value in row, (metric.name, label, value)


# --- names in the docs exist --------------------------------------------------------------

PATH = re.compile(r"(?<![\w/.~-])((?:src|tests|scripts|deploy|docker|docs|bench|model_repository|requirements|\.ci)/[\w./-]*|Dockerfile|pyproject\.toml|mkdocs\.yml)")
MODULE = re.compile(r"(?<![\w.])(triton_guard(?:_demo)?(?:\.\w+)+)")


def _texts() -> list[tuple[str, str]]:
    pages = [README, *DOCS, REPO / "mkdocs.yml"]
    return [(str(p.relative_to(REPO)), p.read_text(encoding="utf-8")) for p in pages]


def test_docs_name_only_files_the_repository_has():
    for name, text in _texts():
        assert "shared/design" not in text, name
        for path in PATH.findall(text):
            path = path.rstrip(".")
            assert (REPO / path).exists(), f"{name} names {path}, which the repository does not have"


IMPORT = re.compile(r"^\s*from (triton_guard[\w.]*) import ([\w, ]+)$", re.M)


def test_docs_name_only_modules_and_names_the_package_has():
    for name, text in _texts():
        dotted_names = set(MODULE.findall(text))
        for module, imported in IMPORT.findall(text):  # the examples' imports
            dotted_names |= {f"{module}.{n.strip()}" for n in imported.split(",")}
        for dotted in dotted_names:
            assert _defined(dotted), f"{name} names {dotted}, which the package does not define"


def _defined(dotted: str) -> bool:
    """A module, or a name defined at the top of one (read from source: nothing is imported)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        spec = importlib.util.find_spec(".".join(parts[:split])) if _parent_is_package(parts[:split]) else None
        if spec is None:
            continue
        rest = parts[split:]
        if not rest:
            return True
        if spec.origin is None or len(rest) > 2:
            return False
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        return _names(tree.body, rest)
    return False


def _parent_is_package(parts: list[str]) -> bool:
    if len(parts) == 1:
        return True
    parent = importlib.util.find_spec(".".join(parts[:-1])) if _parent_is_package(parts[:-1]) else None
    return parent is not None and parent.submodule_search_locations is not None


def _names(body: list[ast.stmt], rest: list[str]) -> bool:
    for node in body:
        names: list[str] = []
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(a.asname or a.name).split(".")[0] for a in node.names]
        if rest[0] in names:
            return len(rest) == 1 or (isinstance(node, ast.ClassDef) and _names(node.body, rest[1:]))
    return False


def test_code_points_only_at_pages_the_docs_have():
    # Comments, docstrings and help texts send readers to docs/<page>.md: the page must exist.
    # (Only this site's folders: docs/user_guide/... is Triton's own documentation.)
    for folder in ("src", "scripts", "tests"):
        for source in (REPO / folder).rglob("*.py"):
            for page in re.findall(r"(?<![\w/])docs/(?:reference/)?[\w.-]+\.md", source.read_text(encoding="utf-8")):
                assert (REPO / page).is_file(), f"{source.relative_to(REPO)} names {page}"
