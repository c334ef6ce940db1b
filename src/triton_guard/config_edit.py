"""Small edits to a config.pbtxt that keep everything else of it: comments, layout, order.

`triton-guard guard` changes a few fields of a user's config (the model's
`name` when it moves, `backend` for the in-process placement, an ensemble
step's `model_name`) and adds others (guard `parameters`, tensors the server
auto-completed). Re-serialising the whole message would lose the user's
comments, so the edit is made on the text, token by token (protobuf text
format: strings, identifiers, numbers, braces; `#` comments skipped), and
`edited_text` then checks that the edited text parses to exactly the config
wanted. When an edit cannot be made on the text (a construct this scanner
does not read, a value it cannot place), the config is written whole
instead: same meaning, comments lost, and the caller says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_guard.errors import Unreadable
from triton_guard.model_config import config_text

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<number>[-+]?[0-9.][0-9A-Za-z_.+-]*)
      | (?P<punct>[{}\[\]<>:,;])
      | (?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)
_OPEN, _CLOSE = "{<", "}>"


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int
    depth: int  # message nesting: 0 for the config's own fields


def tokens(text: str) -> Iterator[Token]:
    """The significant tokens of protobuf text (no whitespace, no comments), with their nesting depth."""
    depth = 0
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind in ("ws", "comment"):
            continue
        if kind == "other":
            raise Unreadable(f"unexpected {match.group()!r} at offset {match.start()}")
        value = match.group()
        if kind == "punct" and value in _CLOSE:
            depth -= 1
        yield Token(kind, value, match.start(), match.end(), depth)
        if kind == "punct" and value in _OPEN:
            depth += 1


def _values(text: str, field: str, top_level: bool) -> Iterator[tuple[int, int, str]]:
    """(start, end, token text) of every scalar value given to `field`."""
    toks = list(tokens(text))
    for i, tok in enumerate(toks):
        if tok.kind != "ident" or tok.text != field or (top_level and tok.depth != 0):
            continue
        if i > 0 and toks[i - 1].text == ":":
            continue  # an enum value spelt like the field, not the field
        j = i + 1
        if j < len(toks) and toks[j].text == ":":
            j += 1
        if j < len(toks) and toks[j].kind in ("string", "number", "ident"):
            end = j
            while end + 1 < len(toks) and toks[j].kind == "string" and toks[end + 1].kind == "string":
                end += 1  # adjacent strings concatenate
            yield toks[j].start, toks[end].end, text[toks[j].start : toks[end].end]


def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _unquote(token_text: str) -> str | None:
    parts = re.findall(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'", token_text)
    raw = "".join(a or b for a, b in parts)
    return None if "\\" in raw else raw  # escapes: leave to the whole rewrite


def set_scalar(text: str, field: str, value: str | int) -> str | None:
    """`text` with the top-level `field` given `value`; None when the text does not set that field."""
    found = list(_values(text, field, top_level=True))
    if len(found) != 1:
        return None
    start, end, _ = found[0]
    return text[:start] + (_string(value) if isinstance(value, str) else str(value)) + text[end:]


def rename_references(text: str, field: str, old: str, new: str) -> str:
    """`text` with every string value of `field` (any depth) that is `old` made `new`."""
    for start, end, token in reversed(list(_values(text, field, top_level=False))):
        if _unquote(token) == old:
            text = text[:start] + _string(new) + text[end:]
    return text


def appended(text: str, lines: list[str]) -> str:
    if not lines:
        return text
    return text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(lines) + "\n"


def field_lines(config: model_config_pb2.ModelConfig, field: str) -> list[str]:
    """The lines `config_text` writes for one field of `config` (one per tensor, per parameter...)."""
    only = model_config_pb2.ModelConfig()
    only.CopyFrom(config)
    for descriptor, _ in only.ListFields():
        if descriptor.name != field:
            only.ClearField(descriptor.name)
    lines = config_text(only).splitlines()
    # config_text always says max_batch_size; only that field's own lines are wanted here.
    return lines if field == "max_batch_size" else [line for line in lines if not line.startswith("max_batch_size:")]


def edited_text(
    original: str, wanted: model_config_pb2.ModelConfig, edit: Callable[[str], str | None], header: str = ""
) -> tuple[str, bool]:
    """(the text to write, whether `original`'s comments and layout were kept).

    `edit(original)` makes the change on the text; it is kept only when it
    parses to exactly `wanted`. Otherwise `wanted` is written whole, after
    `header`.
    """
    try:
        text = edit(original)
    except Unreadable:
        text = None
    if text is not None:
        try:
            if text_format.Parse(text, model_config_pb2.ModelConfig()) == wanted:
                return text, True
        except text_format.ParseError:
            pass
    return header + config_text(wanted), False


def has_comments(text: str) -> bool:
    return any(line.lstrip().startswith("#") for line in text.splitlines())
