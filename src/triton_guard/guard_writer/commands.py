"""The commands `guard` and `unguard` print for a running server: loads and unloads in the order that keeps clients answered.

Triton's repository API is restricted under `triton-guard serve`, so each
command carries the key, in a form that works pasted as printed (double
quotes: the shell expands them): `$(cat FILE)` for the key file a local
serve on that port recorded (server/local_record.py), else
`$TRITON_GUARD_API_KEY`, with a line saying to set it when it is not set.
"""

from __future__ import annotations

import os
import shlex

from triton_guard import defaults
from triton_guard.server import local_record


def http_address(grpc_url: str, environ: dict[str, str] | None = None) -> tuple[str, local_record.LocalRecord | None]:
    """(HOST:PORT of the server's HTTP endpoint, its local record) for the server whose gRPC URL is `grpc_url`."""
    record = local_record.for_url(grpc_url, environ)
    if record is not None:
        return record.http_url, record
    host, _ = local_record.split_url(grpc_url)
    return f"{host or 'localhost'}:{defaults.HTTP_PORT}", None


def key_expression(record: local_record.LocalRecord | None, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(what the shell expands to the key, a line to print first or "")."""
    env = os.environ if environ is None else environ
    if record is not None and record.key_file:
        return f"$(cat {shlex.quote(record.key_file)})", ""
    if record is None and not env.get(defaults.API_KEY_ENV) and env.get(defaults.API_KEY_FILE_ENV):
        return f'$(cat "${defaults.API_KEY_FILE_ENV}")', ""
    if record is not None or env.get(defaults.API_KEY_ENV):
        return f"${defaults.API_KEY_ENV}", ""
    return f"${defaults.API_KEY_ENV}", (
        f"(set {defaults.API_KEY_ENV} to the server's key first: `triton-guard serve` says where it is when it starts)"
    )


def server_lines(
    steps: list[tuple[str, str]], grpc_url: str, restart: str = "picks this up on restart",
    environ: dict[str, str] | None = None,
) -> list[str]:
    """What to print after a change to the repository: restart, or these commands in this order."""
    if not steps:
        return []
    http, record = http_address(grpc_url, environ)
    key, note = key_expression(record, environ)
    header = f'-H "{defaults.API_KEY_HEADER}: {key}"'
    lines = [f"a running server {restart}, or now, in this order (each prints nothing when it worked):"]
    if note:
        lines.append("  " + note)
    for action, model in steps:
        lines.append(f"  curl -s -X POST {header} {http}/v2/repository/models/{model}/{action}")
    return lines
