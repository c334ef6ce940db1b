"""MkDocs hook: the parts of the docs that are generated from the code at build time.

A page asks for a generated part with a marker on a line of its own:

    <!-- generated: defaults -->           every constant of src/triton_guard/defaults.py
    <!-- generated: guard-parameters -->   the guard model's parameters (guard_parameters below)
    <!-- generated: drift-parameters -->   the guard's drift_* parameters
    <!-- generated: canary-parameters -->  the canary model's parameters (CanaryConfig)
    <!-- generated: metrics -->            every family of the metrics catalogue (src/triton_guard/metrics.py)
    <!-- generated: scripts -->            every file of scripts/ with its opening docstring or comment
    <!-- include: deploy/README.md -->     a Markdown file of the repository, its title dropped, headings one level down

defaults.py is read as source (ast for the assignments, tokenize for the
comments), so its comments are the documentation; the guard's, the canary's and
the catalogue's names and defaults come from the imported package. An unknown
marker, a guard parameter without a description here, or a description of a
parameter the code does not have fails the build.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import io
import re
import tokenize
from pathlib import Path

from mkdocs.exceptions import PluginError

REPOSITORY = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- (generated|include): ([\w./-]+) -->$", re.MULTILINE)

# What each guard parameter means, for users. The names and defaults come from
# the code (guard_parameters); the build fails when the two disagree.
# name -> (default as text, only where the code has no plain default value; meaning)
GUARD_PARAMETER_DOCS: dict[str, tuple[str | None, str]] = {
    "upstream_model": ("(required)", "the model to guard (a guard step only; a model guarded in-process has none)"),
    "timeout_ms": (None, "hard deadline on every request: from when it entered the pipeline (stamped) or reached the guard"),
    "failure_threshold": (None, "consecutive failed **requests** that open the breaker"),
    "recovery_ms": (None, "OPEN -> HALF_OPEN after this long at the latest (a good recovery probe ends OPEN earlier)"),
    "half_open_max_calls": (None, "trial calls admitted in HALF_OPEN; the rest fail fast"),
    "max_inflight": (None, "bulkhead: upstream calls in flight per guard instance, timed-out ones included"),
    "window_size": (None, "sliding window of the last N requests for the rate trips"),
    "minimum_calls": (None, "no rate trip before the window holds this many requests"),
    "failure_rate_threshold": (None, "failure rate over the window that opens"),
    "slow_call_ms": (None, "a call slower than this is slow (every request it carried)"),
    "slow_call_rate_threshold": (None, "slow-call rate over the window that opens"),
    "probe_interval_ms": (
        None,
        "while OPEN, at most one recovery probe this often, one in flight per server; `0` turns active recovery off",
    ),
    "client_error_pattern": ("(none)", "regex for your model's own bad-input messages: those never count as failures"),
    "heal_dead_upstream": (
        None,
        "reload the upstream when its Python stub died (Triton 24.10 never restarts one), through Triton's "
        "repository API beside the request path",
    ),
    "check_finite": (
        None,
        "a NaN or inf in any floating-point output fails the call (reason `non_finite`); costs 3 to 4 µs per call "
        "(`PROBS` of 1 to 64 rows x 10, float32; 10 to 14 µs on a loaded 2-core host)",
    ),
    "breaker_name": (
        "the upstream's name",
        "the name the breaker, its metrics, its messages, `triton-guard breaker` and the drift files use; "
        "`guard --rename` sets it to the name clients call",
    ),
    "drift_output": ("(off)", "the upstream output to monitor; monitoring is on when it is given"),
    "drift_kind": ("the reference's", "`probs` (class probabilities per row) or `values` (any numeric output)"),
    "drift_reference": ("`<breaker_name>/drift/<output>.json`", "relative to the repository root, or absolute"),
    "drift_window": (None, "answers per window (10 to 100000)"),
    "drift_p_alarm": (None, "a p-value below this alarms"),
    "drift_psi_alarm": (None, "a PSI above this alarms"),
}

NO_DEFAULT = object()


def guard_parameters() -> tuple[dict[str, object], frozenset[str]]:
    """Every guard parameter -> its default (NO_DEFAULT where the code has none), and the drift ones' names.

    The one place that knows the guard's configuration API
    (triton_guard.guard.config): GuardConfig's fields, EXTRA_PARAMETERS (their
    defaults are defaults.<NAME>), DriftConfig's fields behind `drift_*`.
    """
    from triton_guard import defaults
    from triton_guard.guard.config import DRIFT_PARAMETERS, EXTRA_PARAMETERS, DriftConfig, GuardConfig

    values: dict[str, object] = {"upstream_model": NO_DEFAULT}
    values.update((f.name, _field_default(f)) for f in dataclasses.fields(GuardConfig))
    values.update((name, getattr(defaults, name.upper(), NO_DEFAULT)) for name in sorted(EXTRA_PARAMETERS))
    drift = {f"drift_{f.name}": _field_default(f) for f in dataclasses.fields(DriftConfig)}
    in_order = [name for name in drift if name in DRIFT_PARAMETERS] + sorted(set(DRIFT_PARAMETERS) - set(drift))
    values.update((name, drift.get(name, NO_DEFAULT)) for name in in_order)
    return values, frozenset(DRIFT_PARAMETERS)


def canary_config_class() -> type:
    """The canary model's configuration class (its fields are the canary's parameters)."""
    from triton_guard.canary.config import CanaryConfig

    return CanaryConfig


# --- defaults.py, read as source ---------------------------------------------------


@dataclasses.dataclass
class Constant:
    name: str
    value: object
    explanation: str  # the comment block above it and the comment beside it


@dataclasses.dataclass
class Section:
    title: str
    note: str  # the header's parenthesis, if any
    constants: list[Constant]


def defaults_path() -> Path:
    spec = importlib.util.find_spec("triton_guard.defaults")
    if spec is None or spec.origin is None:
        raise PluginError("triton_guard is not importable: install the project (pip install -e .)")
    return Path(spec.origin)


def read_defaults(path: Path) -> list[Section]:
    """defaults.py's constants, in order, under their `# --- Section` headers."""
    source = path.read_text(encoding="utf-8")
    comments = _comments(source)
    sections: list[Section] = []
    evaluated: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Expr, ast.Import, ast.ImportFrom)):
            continue
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            raise PluginError(f"{path}:{node.lineno}: expected NAME = value, one constant a statement")
        header = _header_above(comments, node.lineno)
        if header is None:
            raise PluginError(f"{path}:{node.lineno}: constant before the first `# --- Section` header")
        if not sections or sections[-1].title != header[0]:
            sections.append(Section(header[0], header[1], []))
        name = node.targets[0].id
        # Constants are literals or expressions of earlier constants ("prefix" + NAME).
        value = eval(compile(ast.Expression(node.value), str(path), "eval"), {"__builtins__": {}}, dict(evaluated))
        evaluated[name] = value
        explanation = " ".join(_block_above(comments, node.lineno) + _beside(comments, node.lineno, node.end_lineno))
        sections[-1].constants.append(Constant(name, value, explanation))
    return sections


def _comments(source: str) -> dict[int, tuple[bool, str]]:
    """line -> (the comment stands alone on its line, its text)."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            alone = not token.line[: token.start[1]].strip()
            found[token.start[0]] = (alone, token.string.lstrip("#").strip())
    return found


def _is_header(text: str) -> bool:
    return text.startswith("---")


def _header_above(comments: dict[int, tuple[bool, str]], line: int) -> tuple[str, str] | None:
    headers = [n for n, (alone, text) in comments.items() if alone and _is_header(text) and n < line]
    if not headers:
        return None
    text = comments[max(headers)][1].strip("- ")
    title, _, note = text.partition(" (")
    return title.strip(), note.rstrip(")").strip()


def _block_above(comments: dict[int, tuple[bool, str]], line: int) -> list[str]:
    block = []
    above = line - 1
    while above in comments and comments[above][0] and not _is_header(comments[above][1]):
        block.insert(0, comments[above][1])
        above -= 1
    return block


def _beside(comments: dict[int, tuple[bool, str]], first: int, last: int) -> list[str]:
    return [comments[n][1] for n in range(first, last + 1) if n in comments and not comments[n][0]]


# --- rendering -------------------------------------------------------------------


def _cell(text: str, markdown: bool = False) -> str:
    """Text for a table cell: no line breaks, `|` escaped; a code comment (not `markdown`) also
    gets `<`, `>` and `*` escaped outside its code spans, so it shows as written."""
    parts = text.replace("\n", " ").split("`")
    if not markdown:
        for i in range(0, len(parts), 2):  # even parts are outside code spans
            parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
    return "`".join(parts).replace("|", r"\|")


def _value(value: object) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`(" + ", ".join(f'"{v}"' if isinstance(v, str) else repr(v) for v in value) + ")`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value!r}`"


def _field_default(field: dataclasses.Field) -> object:
    if field.default is not dataclasses.MISSING and field.default is not None:
        return field.default
    return NO_DEFAULT


def render_defaults() -> str:
    path = defaults_path()
    out = []
    for section in read_defaults(path):
        out += [f"### {section.title}", ""]
        if section.note:
            out += [f"*{_cell(section.note)}*", ""]
        out += ["| constant | value | why |", "|---|---|---|"]
        out += [f"| `{c.name}` | {_value(c.value)} | {_cell(c.explanation)} |" for c in section.constants]
        out.append("")
    return "\n".join(out)


def _guard_rows(names: list[str], values: dict[str, object]) -> list[str]:
    from triton_guard import defaults

    rows = ["| parameter | default | meaning | constant |", "|---|---|---|---|"]
    for name in names:
        default_text, meaning = GUARD_PARAMETER_DOCS[name]
        code_default = values[name]
        if (code_default is NO_DEFAULT) == (default_text is None):
            raise PluginError(
                f"guard parameter {name}: give its default as text in GUARD_PARAMETER_DOCS exactly when "
                "the code has no plain default value"
            )
        shown = default_text if code_default is NO_DEFAULT else _value(code_default)
        constant = _constant_for(name, code_default, defaults)
        rows.append(f"| `{name}` | {_cell(shown, markdown=True)} | {_cell(meaning, markdown=True)} | {constant} |")
    return rows


def _constant_for(name: str, value: object, defaults_module: object) -> str:
    """The defaults.py constant of the parameter's name and value (timeout_ms -> TIMEOUT_MS), if there is one."""
    constant = name.upper()
    if value is not NO_DEFAULT and getattr(defaults_module, constant, NO_DEFAULT) == value:
        return f"`{constant}`"
    return ""


def _checked_guard_parameters() -> tuple[dict[str, object], frozenset[str]]:
    values, drift = guard_parameters()
    undocumented = sorted(set(values) - set(GUARD_PARAMETER_DOCS))
    unknown = sorted(set(GUARD_PARAMETER_DOCS) - set(values))
    if undocumented or unknown:
        raise PluginError(
            f"docs/hooks/reference.py GUARD_PARAMETER_DOCS: describe {undocumented}; "
            f"the code has no parameter(s) {unknown}"
        )
    return values, drift


def render_guard_parameters() -> str:
    values, drift = _checked_guard_parameters()
    return "\n".join(_guard_rows([n for n in values if n not in drift], values)) + "\n"


def render_drift_parameters() -> str:
    values, drift = _checked_guard_parameters()
    return "\n".join(_guard_rows([n for n in values if n in drift], values)) + "\n"


def render_canary_parameters() -> str:
    config = canary_config_class()
    explanations = {c.name: c.explanation for s in read_defaults(defaults_path()) for c in s.constants}
    own = _field_comments(config)
    per_call = getattr(config, "PER_CALL", frozenset())
    rows = ["| parameter | default | meaning | per probe | constant |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(config):
        if not field.name.islower():  # a class constant such as PER_CALL, not a parameter
            continue
        comment, constant = own.get(field.name, ("", None))
        meaning = comment or explanations.get(constant or "", "")  # the class's own comment first
        default = field.default
        shown = "(every model)" if default == () else _value(default)
        rows.append(
            f"| `{field.name}` | {_cell(shown)} | {_cell(meaning)} | {'yes' if field.name in per_call else ''} "
            f"| {f'`{constant}`' if constant else ''} |"
        )
    return "\n".join(rows) + "\n"


def _field_comments(cls: type) -> dict[str, tuple[str, str | None]]:
    """field -> (the comments above and beside it in the class source, the defaults.<CONSTANT> its default is)."""
    path = Path(inspect.getsourcefile(cls))
    source = path.read_text(encoding="utf-8")
    comments = _comments(source)
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    value = item.value
                    constant = value.attr if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "defaults" else None
                    text = " ".join(_block_above(comments, item.lineno) + _beside(comments, item.lineno, item.end_lineno))
                    found[item.target.id] = (text, constant)
    return found


def render_metrics() -> str:
    from triton_guard.metrics import CATALOGUE, Kind

    rows = ["| metric | type | labels | help | published by |", "|---|---|---|---|---|"]
    for metric in CATALOGUE.values():
        labels = []
        for label, allowed in metric.labels.items():
            labels.append(f"`{label}`" + (" (" + ", ".join(f"`{v}`" for v in allowed) + ")" if allowed else ""))
        kind = metric.kind.value
        if metric.kind is Kind.HISTOGRAM:
            series = ", ".join(f"`{n}`" for n in metric.series_names)
            kind += f": the counters {series}; `le`: " + ", ".join(f"`{b}`" for b in metric.bucket_bounds)
        help_text = metric.help + (f". First series on {metric.first_series_on}." if metric.first_series_on else "")
        rows.append(
            f"| `{metric.name}` | {kind} | {', '.join(labels) or '(none)'} | {_cell(help_text)} | {metric.publisher.value} |"
        )
    return "\n".join(rows) + "\n"


def render_scripts() -> str:
    rows = ["| script | what it does |", "|---|---|"]
    for path in sorted((REPOSITORY / "scripts").iterdir()):
        if path.suffix == ".py":
            text = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        elif path.suffix == ".sh":
            lines = path.read_text(encoding="utf-8").splitlines()[1:]
            text = "\n".join(line.lstrip("#").strip() for line in _leading_comments(lines))
        else:
            continue
        summary = " ".join(text.strip().split("\n\n")[0].split())
        if path.suffix == ".sh":  # a script's opening comment runs on into usage: its first sentence
            summary = re.split(r"(?<=\.) (?=[A-Z])", summary)[0]
        if not summary:
            raise PluginError(f"{path.relative_to(REPOSITORY)}: no opening docstring or comment to say what it does")
        rows.append(f"| `scripts/{path.name}` | {_cell(summary)} |")
    return "\n".join(rows) + "\n"


def _leading_comments(lines: list[str]) -> list[str]:
    taken = []
    for line in lines:
        if not line.startswith("#"):
            break
        taken.append(line)
    return taken


def include(relative: str) -> str:
    path = REPOSITORY / relative
    if not path.is_file():
        raise PluginError(f"include: {relative} is not a file of the repository")
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        out.append("#" + line if not fenced and line.startswith("#") else line)
    return "\n".join(out).strip("\n") + "\n"


GENERATORS = {
    "defaults": render_defaults,
    "guard-parameters": render_guard_parameters,
    "drift-parameters": render_drift_parameters,
    "canary-parameters": render_canary_parameters,
    "metrics": render_metrics,
    "scripts": render_scripts,
}


def expand(markdown: str, where: str) -> str:
    def replace(match: re.Match) -> str:
        kind, name = match.groups()
        if kind == "include":
            return include(name)
        if name not in GENERATORS:
            raise PluginError(f"{where}: unknown generated section {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' hook signature)
    return expand(markdown, page.file.src_path)
