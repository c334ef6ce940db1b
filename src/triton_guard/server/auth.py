"""The API key that guards Triton's restricted APIs (model control, shared memory, ...).

Where the key comes from (resolve_api_key; api_key_for, for a tool calling a
given server), what a valid one looks like (check_api_key), the Triton flags
that require it (restricted_api_args), the header that carries it
(key_header, admin_headers_for, admin_headers_from_environment), what to say
when a server refuses for want of it (is_restricted_refusal,
restricted_hint), the check a model makes itself when a command carries the
key (api_key_matches: the breaker override), and is_loopback, which tells an
address only this host can reach.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from pathlib import Path

from triton_guard import defaults
from triton_guard.errors import ServerError


def is_loopback(host: str) -> bool:
    """True for an address only this host can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(environ: dict[str, str] | None = None) -> tuple[str, str]:
    """(key, where it came from) for Triton's restricted APIs.

    $TRITON_GUARD_API_KEY, else the file named by $TRITON_GUARD_API_KEY_FILE
    (a mounted Kubernetes Secret), else a new random key for this run.
    """
    env = os.environ if environ is None else environ
    if env.get(defaults.API_KEY_ENV):
        return env[defaults.API_KEY_ENV].strip(), f"${defaults.API_KEY_ENV}"
    path = env.get(defaults.API_KEY_FILE_ENV)
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise ServerError(f"cannot read the API key file {path} (${defaults.API_KEY_FILE_ENV}): {exc.strerror}") from None
        if not key:
            raise ServerError(f"the API key file {path} (${defaults.API_KEY_FILE_ENV}) is empty")
        return key, path
    return secrets.token_urlsafe(32), "generated"


def _key_configured(env: dict[str, str]) -> bool:
    """$TRITON_GUARD_API_KEY or $TRITON_GUARD_API_KEY_FILE is set (else there is no key to resolve)."""
    return bool(env.get(defaults.API_KEY_ENV) or env.get(defaults.API_KEY_FILE_ENV))


def _header_name(grpc: bool) -> str:
    # Triton 2.51 reads the key from gRPC metadata under a prefixed name.
    return defaults.GRPC_API_KEY_HEADER if grpc else defaults.API_KEY_HEADER


def key_header(key: str | None, grpc: bool) -> dict[str, str]:
    """The header that carries `key` to a restricted API over gRPC or HTTP (tritonclient's `headers=`); {} without a key."""
    return {_header_name(grpc): key} if key else {}


def admin_headers_from_environment(grpc: bool, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The key header for a restricted API, from $TRITON_GUARD_API_KEY or its file; {} when neither is set.

    For the project's tools (goldens record, tests) that call a restricted API of a running server.
    """
    env = os.environ if environ is None else environ
    if not _key_configured(env):
        return {}
    key, _ = resolve_api_key(env)
    return {_header_name(grpc): key}


def api_key_matches(given: str, environ: dict[str, str] | None = None) -> bool:
    """True when `given` is the server's key ($TRITON_GUARD_API_KEY or its file, as `serve` hands it to models).

    False when the server has no key: then nothing is allowed.
    """
    env = os.environ if environ is None else environ
    if not _key_configured(env):
        return False
    try:
        key, _ = resolve_api_key(env)
    except ServerError:
        return False
    return hmac.compare_digest(given.encode(), key.encode())


def check_api_key(key: str) -> str:
    # The key travels on Triton's command line as "<apis>:<header>=<key>" and in a header.
    if not re.fullmatch(r"[A-Za-z0-9._~+/-]{16,256}", key):
        raise ServerError("the API key must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ + / -")
    return key


def restricted_api_args(key: str) -> list[str]:
    """Triton 2.51 flags that put the admin APIs behind `<API_KEY_HEADER>: key` on HTTP and gRPC."""
    apis = ",".join(defaults.RESTRICTED_APIS)
    rule = f"{apis}:{defaults.API_KEY_HEADER}={key}"
    return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]


def api_key_for(url: str, environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(key, where it came from) for a tool calling a restricted API of the server at `url`; (None, "") if none is known.

    The key file a local `triton-guard serve` on that port recorded
    (local_record.py: the key that server really uses), else
    $TRITON_GUARD_API_KEY, else the file named by $TRITON_GUARD_API_KEY_FILE.
    """
    from triton_guard.server import local_record

    env = os.environ if environ is None else environ
    record = local_record.for_url(url, env)
    key = record.key() if record is not None else None
    if key:
        return key, f"the key file {record.key_file} of the local server on port {local_record.split_url(url)[1]}"
    if _key_configured(env):
        try:
            return resolve_api_key(env)
        except ServerError:
            return None, ""
    return None, ""


def admin_headers_for(url: str, grpc: bool, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The key header for a restricted API of the server at `url` (api_key_for); {} when no key is known."""
    key, _ = api_key_for(url, environ)
    return key_header(key, grpc)


def is_restricted_refusal(message: str) -> bool:
    """Triton's answer to a restricted API called without the right key (HTTP 403 or gRPC)."""
    return "is restricted, expecting header" in message


def restricted_hint(url: str) -> str:
    """Exactly what to set when the server at `url` refused a restricted API."""
    return (
        f"the server at {url} needs its API key for this: set {defaults.API_KEY_ENV} to it "
        f"(or {defaults.API_KEY_FILE_ENV} to a file holding it); `triton-guard serve` says where its key is when it "
        "starts, and the tools find the key of a local serve by its port on their own"
    )
