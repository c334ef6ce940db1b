"""What a running `triton-guard serve` leaves for the local tools of the same user, found by the server's port.

`serve` restricts Triton's model-repository API behind a key (auth.py). So
that `goldens record`, `drift record` and the load commands `guard` prints
work against a local server with no manual step, each LocalServer writes one
small JSON record per port (HTTP and gRPC) while it runs: the tritonserver
pid, its ports, the repository it serves, where its key came from and the
file holding it (the generated key's file in the run's private work
directory, or $TRITON_GUARD_API_KEY_FILE; a key from $TRITON_GUARD_API_KEY
is named, not copied). The records live in a directory only this user can
read (mode 0700, owned by the user: $TRITON_GUARD_RUN_DIR, else
$XDG_RUNTIME_DIR/triton-guard, else <tmp>/triton-guard-<uid>), each file
mode 0600, and are removed at stop. A record whose tritonserver is gone
(a crashed serve: its watchdog removed the work directory and key) is
ignored and removed by the next reader.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from triton_guard import defaults

RECORD_PREFIX = "port-"


def run_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(defaults.RUN_DIR_ENV):
        return Path(env[defaults.RUN_DIR_ENV])
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "triton-guard"
    return Path(tempfile.gettempdir()) / f"triton-guard-{os.getuid()}"


def private_dir(path: Path, create: bool) -> Path | None:
    """`path` if it is a directory of this user that no one else can read (made so when `create`), else None."""
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return None
    try:
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None  # a link, someone else's, or readable by others: not a place for keys
    return path


@dataclass(frozen=True)
class LocalRecord:
    """One running local server, as its record says."""

    pid: int  # tritonserver's
    host: str  # where a client on this host reaches it
    http_port: int
    grpc_port: int
    metrics_port: int
    model_repository: str
    key_source: str  # "generated", "$TRITON_GUARD_API_KEY", or the key file's path
    key_file: str | None  # the file holding the key; None when it came from the environment

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    def key(self) -> str | None:
        if not self.key_file:
            return None
        try:
            return Path(self.key_file).read_text().strip() or None
        except OSError:
            return None


def _path(directory: Path, port: int) -> Path:
    return directory / f"{RECORD_PREFIX}{port}.json"


def write(record: LocalRecord, environ: dict[str, str] | None = None) -> list[Path]:
    """Write the record under both ports; the paths written ([] when there is no private place for it)."""
    directory = private_dir(run_dir(environ), create=True)
    if directory is None:
        return []
    text = json.dumps(asdict(record)) + "\n"
    written = []
    for port in (record.http_port, record.grpc_port):
        path = _path(directory, port)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        written.append(path)
    return written


def remove(paths: list[Path], pid: int) -> None:
    """Remove the records a server wrote, unless another server has taken the port since."""
    for path in paths:
        try:
            if json.loads(path.read_text()).get("pid") == pid:
                path.unlink()
        except (OSError, ValueError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find(port: int, environ: dict[str, str] | None = None) -> LocalRecord | None:
    """The record of the running local server listening on `port` (HTTP or gRPC), or None."""
    directory = private_dir(run_dir(environ), create=False)
    if directory is None:
        return None
    path = _path(directory, port)
    try:
        record = LocalRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _alive(record.pid):
        path.unlink(missing_ok=True)  # its serve crashed; the watchdog removed the rest
        return None
    return record


def split_url(url: str) -> tuple[str, int | None]:
    """(host, port) of 'HOST:PORT' or 'http://HOST:PORT/...'; port None when there is none."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return rest, None
    return host.strip("[]"), int(port)


def for_url(url: str, environ: dict[str, str] | None = None) -> LocalRecord | None:
    """The local server a URL names (a loopback host and a port with a record), or None."""
    from triton_guard.server.auth import is_loopback

    host, port = split_url(url)
    if port is None or not is_loopback(host):
        return None
    return find(port, environ)


def record_server(server) -> list[Path]:
    """Write the records of a LocalServer whose tritonserver has started; [] when they cannot be written."""
    source = server.api_key_source
    if server.api_key_file is not None:
        key_file = str(server.api_key_file)  # generated: in the run's private work directory
    elif source not in ("given", f"${defaults.API_KEY_ENV}"):
        key_file = source  # resolve_api_key names the $TRITON_GUARD_API_KEY_FILE it read
    else:
        key_file = None
    record = LocalRecord(
        server.process.pid, server.connect_host, server.ports.http, server.ports.grpc, server.ports.metrics,
        str(Path(server.model_repository).resolve()), source, key_file,
    )
    try:
        return write(record)
    except OSError:
        return []  # the tools then need the key set by hand, as before
