"""Reading a JSON file with one clear error: the file cannot be read, or it does not hold JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path, error: type[Exception], name: str) -> Any:
    """The JSON document in `path`, else `error`: "cannot read NAME: why" or "NAME is not JSON: why"."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"cannot read {name}: {exc.strerror}") from None
    except ValueError as exc:
        raise error(f"{name} is not JSON: {exc}") from None
