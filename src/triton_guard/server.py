"""Run a real Triton 2.51 server from the PyPI wheels (or the production image).

`nvidia-pytriton` ships `tritonserver`, the Python backend and one backend
stub per Python version, but not laid out the way Triton expects (see
shared/design/triton-2.51-facts.md section 1). `LocalServer` lays out a
backend directory for one run, starts the server in its own process group,
waits until it is ready, and stops it without leaving stub processes behind.
`triton-guard serve` and the test fixtures both use it.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

from triton_guard import defaults

# Set in the production image, where tritonserver lives in /opt/tritonserver.
ENV_TRITONSERVER = "TRITON_GUARD_TRITONSERVER"
ENV_BACKEND_DIR = "TRITON_GUARD_BACKEND_DIR"

PACKAGE_DIR = Path(__file__).resolve().parent
# The Python-based backends (guard, canary) ship inside the package.
BACKENDS_DIR = PACKAGE_DIR / "backends"
# The `chaos` control model, served as a second repository only with chaos=True.
CHAOS_REPOSITORY = PACKAGE_DIR / "chaos" / "repository"
# The default `canary` model, served as a second repository when DIR has none.
CANARY_REPOSITORY = PACKAGE_DIR / "canary" / "repository"

# Triton log lines worth repeating when start-up fails.
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)'[^:]*: (.*?)\"?$")
_ERROR_LINE = re.compile(r"^E\d{4} ")


def load_failure(line: str) -> str | None:
    """One line for a person from Triton's "failed to load" log line, else None."""
    match = _LOAD_FAILURE.search(line)
    if match is None:
        return None
    # Triton writes a Python traceback's newlines as "\\n": its first line is the reason.
    reason = match.group(2).split("\\n", 1)[0]
    return f"model '{match.group(1)}' failed to load: {reason}"


class ServerError(RuntimeError):
    """The server could not be started; the message is one line for a person."""


@dataclass(frozen=True)
class Ports:
    http: int = defaults.HTTP_PORT
    grpc: int = defaults.GRPC_PORT
    metrics: int = defaults.METRICS_PORT

    def named(self) -> dict[str, int]:
        return {"HTTP": self.http, "gRPC": self.grpc, "metrics": self.metrics}

    @classmethod
    def free(cls) -> "Ports":
        """Three ports nothing listens on now (for tests and parallel runs)."""
        socks = [socket.socket() for _ in range(3)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


def _pytriton_root() -> Path | None:
    # find_spec, not import: importing pytriton pulls in its whole client stack.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_tritonserver() -> Path:
    override = os.environ.get(ENV_TRITONSERVER)
    if override:
        return Path(override)
    root = _pytriton_root()
    if root is None:
        raise ServerError(
            "tritonserver not found: install nvidia-pytriton==0.7.0 "
            f"or set {ENV_TRITONSERVER}"
        )
    return root / "tritonserver" / "bin" / "tritonserver"


def build_backend_dir(target: Path, backends_source: Path | None) -> Path:
    """Lay out a Triton backend directory under `target`.

    python/ holds links to the wheel's Python backend and the stub built for
    the running interpreter (Triton looks for the stub next to
    libtriton_python.so); every folder of `backends_source` (guard, canary)
    is linked beside it as a Python-based backend.
    """
    root = _pytriton_root()
    if root is None:
        raise ServerError("nvidia-pytriton is not installed: no Python backend to serve with")
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    # A copy, not a link: Triton refuses a Python-based backend whose
    # libtriton_python.so resolves outside the backend directory. Its
    # libraries are then found through LD_LIBRARY_PATH (server_environment).
    shutil.copy2(dist / "backends" / "python" / "libtriton_python.so", python_dir)
    for source in (dist / "backends" / "python" / "triton_python_backend_utils.py", stub):
        (python_dir / source.name).symlink_to(source)
    if backends_source is not None and backends_source.is_dir():
        for backend in sorted(p for p in backends_source.iterdir() if (p / "model.py").exists()):
            (target / backend.name).symlink_to(backend.resolve(), target_is_directory=True)
    return target


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which the stubs load the right libpython and this venv's packages."""
    env = dict(os.environ if base is None else base)
    lib_dirs = [sysconfig.get_config_var("LIBDIR") or ""]
    root = _pytriton_root()
    if root is not None:
        lib_dirs.append(str(root.parent / "nvidia_pytriton.libs"))
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(d for d in lib_dirs if d)
    # The stub imports packages from the python3 first on PATH.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def set_chaos_mode(env: dict[str, str], chaos_dir: Path | None) -> dict[str, str]:
    """Point the models' chaos hooks at `chaos_dir`, or, with None, make sure none starts.

    Removing the variable matters: one left in the caller's environment
    would arm the hooks of a server started without --chaos.
    """
    if chaos_dir is None:
        env.pop(defaults.CHAOS_DIR_ENV, None)
    else:
        chaos_dir.mkdir(parents=True, exist_ok=True)
        env[defaults.CHAOS_DIR_ENV] = str(chaos_dir)
    return env


def check_ports_free(ports: Ports, host: str = "0.0.0.0") -> None:
    for name, port in ports.named().items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServerError(f"{name} port {port} is already in use") from None
                raise ServerError(f"cannot bind {name} port {port}: {exc.strerror}") from None


def check_model_repository(path: Path) -> None:
    if not path.is_dir():
        raise ServerError(f"model repository {path} does not exist or is not a directory")
    models = [p for p in path.iterdir() if (p / "config.pbtxt").exists()]
    if not models:
        raise ServerError(f"model repository {path} holds no model (no */config.pbtxt)")


_STUB_BINARY = b"triton_python_backend_stub"
_INSTANCE_NAME = re.compile(rb"^[\w.-]+_\d+(_\d+)?$")  # <model>_<group>_<n>, or <model>_<n>


def stub_pids(server_pid: int) -> dict[str, int]:
    """{instance name: pid} of every Python backend stub of one tritonserver.

    The stub's argv carries its instance name (e.g. classifier_guard_0_1);
    its parent is the server (python_backend forks it).
    """
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent != server_pid or not argv[0].endswith(_STUB_BINARY):
            continue
        names = [arg.decode() for arg in argv[1:] if _INSTANCE_NAME.match(arg)]
        if names:
            stubs[names[0]] = int(entry.name)
    return stubs


@dataclass
class LocalServer:
    """One tritonserver process with a repository, ports and a private backend dir."""

    model_repository: Path
    ports: Ports = field(default_factory=Ports)
    backends_source: Path | None = None
    model_config_name: str | None = None
    extra_args: tuple[str, ...] = ()
    log: IO[str] | None = None  # where server output goes; None: this process's stdout
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment
    chaos: bool = False  # fault injection: the `chaos` model and the models' chaos hooks

    process: subprocess.Popen | None = field(default=None, init=False)
    _workdir: Path | None = field(default=None, init=False)
    _recent_errors: deque = field(default_factory=lambda: deque(maxlen=20), init=False)
    _load_failures: list = field(default_factory=list, init=False)
    _pump: threading.Thread | None = field(default=None, init=False)

    def command(self, backend_dir: Path) -> list[str]:
        cmd = [
            str(find_tritonserver()),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={backend_dir}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            # explicit + load all: everything starts loaded, and a broken
            # model can be reloaded in place (the pod heals without a restart).
            "--model-control-mode=explicit",
            "--load-model=*",
            # Two servers on one host must not share Python-backend shm names.
            f"--backend-config=python,shm-region-prefix-name=triton_guard_{os.getpid()}_{self.ports.grpc}_",
        ]
        if self.chaos:
            cmd.append(f"--model-repository={CHAOS_REPOSITORY}")
        if not (self.model_repository / defaults.CANARY_MODEL / "config.pbtxt").exists():
            cmd.append(f"--model-repository={CANARY_REPOSITORY}")
        if self.model_config_name:
            cmd.append(f"--model-config-name={self.model_config_name}")
        cmd.extend(self.extra_args)
        return cmd

    @property
    def chaos_dir(self) -> Path | None:
        """Where injected faults are kept (chaos mode only)."""
        return self._workdir / "chaos" if self._workdir and self.chaos else None

    @property
    def state_dir(self) -> Path | None:
        """Where this server's guards keep their shared breaker state."""
        return self._workdir / "state" if self._workdir else None

    @property
    def http_url(self) -> str:
        return f"localhost:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"localhost:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://localhost:{self.ports.metrics}/metrics"

    def start(self, ready_timeout_s: float = defaults.SERVER_READY_TIMEOUT_S) -> None:
        check_model_repository(self.model_repository)
        check_ports_free(self.ports)
        self._workdir = Path(tempfile.mkdtemp(prefix="triton-guard-"))
        backend_dir = os.environ.get(ENV_BACKEND_DIR)
        if backend_dir is None:
            source = self.backends_source or BACKENDS_DIR
            backend_dir = str(build_backend_dir(self._workdir / "backends", source))
        env = server_environment()
        # Breaker state shared by this server's stubs; removed with the workdir.
        env[defaults.STATE_DIR_ENV] = str(self.state_dir)
        # The canary reads the server's own metrics and metadata.
        env[defaults.HTTP_URL_ENV] = f"http://localhost:{self.ports.http}"
        env[defaults.METRICS_URL_ENV] = self.metrics_url
        # ... and checks the goldens of this repository's models.
        env[defaults.MODEL_REPOSITORIES_ENV] = str(self.model_repository.resolve())
        env.update(self.env)
        set_chaos_mode(env, self.chaos_dir)
        self.process = subprocess.Popen(
            self.command(Path(backend_dir)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            start_new_session=True,  # own process group: stubs die with it
        )
        self._pump = threading.Thread(target=self._pump_output, daemon=True)
        self._pump.start()
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _pump_output(self) -> None:
        out = self.log or sys.stdout
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            out.write(line)
            out.flush()
            failure = load_failure(line)
            if failure:
                self._load_failures.append(failure)
            elif _ERROR_LINE.match(line):
                self._recent_errors.append(line.strip())

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://localhost:{self.ports.http}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._pump.join(timeout=5)
                raise ServerError(self._startup_failure())
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise ServerError(f"server not ready after {timeout_s:.0f} s: {self._startup_failure()}")

    def _startup_failure(self) -> str:
        if self._load_failures:
            return self._load_failures[0]
        errors = [e for e in self._recent_errors if "CUDA" not in e and "NVML" not in e and "Cuda" not in e]
        if errors:
            return errors[-1].split("] ", 1)[-1].strip('"')
        code = self.process.returncode if self.process else None
        return f"tritonserver exited with status {code}"

    def stop(self, timeout_s: float = defaults.SERVER_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the server (it unloads models and stops stubs), then clean the group."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            # Whatever is left in the group (a stuck stub) goes now.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            if self._pump is not None:
                self._pump.join(timeout=5)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        return proc.returncode if proc else None

    def stub_pids(self) -> dict[str, int]:
        return stub_pids(self.process.pid) if self.process else {}

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def __enter__(self) -> "LocalServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _print_now(line: str) -> None:
    # stdout is block-buffered when it is a pipe (docker logs, systemd, `| tee`):
    # without a flush the "ready" line would wait for Triton's next log line.
    print(line, flush=True)


def serve_forever(server: LocalServer, announce: Callable[[str], None] = _print_now) -> int:
    """Foreground serve: start, announce endpoints, stop cleanly on SIGINT/SIGTERM."""
    stop_requested = threading.Event()

    def request_stop(signum, _frame):
        stop_requested.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        announce(
            "triton-guard: ready "
            f"HTTP http://localhost:{server.ports.http}  "
            f"gRPC localhost:{server.ports.grpc}  "
            f"metrics {server.metrics_url}"
        )
        while not stop_requested.is_set():
            if server.process.poll() is not None:
                announce(f"triton-guard: tritonserver exited with status {server.process.returncode}")
                return 1
            stop_requested.wait(0.5)
        announce("triton-guard: stopping")
        code = server.stop()
        return 0 if code in (0, -signal.SIGTERM) else 1
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
