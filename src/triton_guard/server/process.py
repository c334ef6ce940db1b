"""LocalServer: one real tritonserver (2.51, from the PyPI wheels or the image) and its lifecycle.

LocalServer lays out a backend directory for one run, starts the server in
its own process group beside a watchdog (server/watchdog.py), waits until it
is ready, and stops it without leaving stub processes, shared memory or files
behind. Beside it: Ports, the checks run before a start (ports free, a
repository with models), and load_failure, which turns Triton's "failed to
load" log line into one line for a person. `triton-guard serve` and the test
fixtures both use it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from triton_guard import defaults
from triton_guard.errors import ServerError
from triton_guard.server import local_record, watchdog
from triton_guard.server.auth import check_api_key, is_loopback, key_header, resolve_api_key, restricted_api_args
from triton_guard.server.locate import (
    BACKENDS_DIR,
    CANARY_REPOSITORY,
    CHAOS_REPOSITORY,
    CONTROL_REPOSITORY,
    ENV_BACKEND_DIR,
    build_backend_dir,
    find_tritonserver,
    server_environment,
    set_chaos_mode,
    stub_python_overlay,
)
from triton_guard.server.processes import stub_pids, wait_group_gone
from triton_guard.server.shm import SHM_DIR, remove_shm, remove_stale_shm

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
    # A model is a folder with a config.pbtxt, or with a numbered version folder (its config completed at load).
    models = [
        p for p in path.iterdir()
        if (p / "config.pbtxt").exists() or (p.is_dir() and any(v.name.isdigit() and v.is_dir() for v in p.iterdir()))
    ]
    if not models:
        raise ServerError(f"model repository {path} holds no model (no */config.pbtxt, no */<version>/)")


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
    host: str = defaults.SERVE_HOST  # bind address of HTTP, gRPC and metrics
    # Restricted APIs (defaults.RESTRICTED_APIS) need this key; None: resolve_api_key().
    api_key: str | None = None
    exit_timeout_s: float = defaults.SERVER_STOP_TIMEOUT_S  # Triton's --exit-timeout-secs

    process: subprocess.Popen | None = field(default=None, init=False)
    _workdir: Path | None = field(default=None, init=False)
    _recent_errors: deque = field(default_factory=lambda: deque(maxlen=20), init=False)
    _load_failures: list = field(default_factory=list, init=False)
    _pump: threading.Thread | None = field(default=None, init=False)
    _watchdog: subprocess.Popen | None = field(default=None, init=False)
    api_key_source: str = field(default="", init=False)
    local_records: list = field(default_factory=list, init=False)  # where local tools find this run (local_record.py)
    removed_stale_shm: list = field(default_factory=list, init=False)

    @property
    def kill_grace_s(self) -> float:
        """The end of exit_timeout_s kept for unloading; after it, what is left is SIGKILLed."""
        return min(defaults.SERVER_KILL_GRACE_S, self.exit_timeout_s / 2)

    @property
    def drain_s(self) -> int:
        """Triton's --exit-timeout-secs: how long it waits for requests in flight (a hung model's never end)."""
        return max(1, int(self.exit_timeout_s - self.kill_grace_s))

    @property
    def shm_prefix(self) -> str:
        """The Python backend's /dev/shm names of this server (unique per serve process and gRPC port)."""
        return f"{defaults.SHM_PREFIX}{os.getpid()}_{self.ports.grpc}_"

    @property
    def admin_headers(self) -> dict[str, str]:
        """The header the restricted HTTP APIs need (tritonclient.http's `headers=`)."""
        return key_header(self.api_key, grpc=False)

    @property
    def grpc_admin_headers(self) -> dict[str, str]:
        """The same for gRPC (tritonclient.grpc's `headers=`): Triton prefixes the key there."""
        return key_header(self.api_key, grpc=True)

    def command(self, backend_dir: Path) -> list[str]:
        cmd = [
            str(find_tritonserver()),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={backend_dir}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--exit-timeout-secs={self.drain_s}",
            # explicit + load all: everything starts loaded, and a broken
            # model can be reloaded in place (the pod heals without a restart).
            "--model-control-mode=explicit",
            "--load-model=*",
            # Two servers on one host must not share Python-backend shm names.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
        ]
        if self.api_key:
            cmd.extend(restricted_api_args(self.api_key))
        if self.chaos:
            cmd.append(f"--model-repository={CHAOS_REPOSITORY}")
        if not (self.model_repository / defaults.CANARY_MODEL / "config.pbtxt").exists():
            cmd.append(f"--model-repository={CANARY_REPOSITORY}")
        if not (self.model_repository / defaults.CONTROL_MODEL / "config.pbtxt").exists():
            cmd.append(f"--model-repository={CONTROL_REPOSITORY}")
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
    def connect_host(self) -> str:
        """Where a client on this host reaches the server."""
        return "localhost" if self.host in ("0.0.0.0", "::") or is_loopback(self.host) else self.host

    @property
    def http_url(self) -> str:
        return f"{self.connect_host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.connect_host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.connect_host}:{self.ports.metrics}/metrics"

    @property
    def api_key_file(self) -> Path | None:
        """A generated key is written here (mode 0600) for the tools of this run."""
        return self._workdir / "api-key" if self._workdir and self.api_key_source == "generated" else None

    def start(self, ready_timeout_s: float = defaults.SERVER_READY_TIMEOUT_S) -> None:
        check_model_repository(self.model_repository)
        check_ports_free(self.ports, self.host)
        if self.api_key is None:
            self.api_key, self.api_key_source = resolve_api_key()
        else:
            self.api_key_source = self.api_key_source or "given"
        check_api_key(self.api_key)
        for arg in self.extra_args:  # Triton's own flag, given last, wins: stop() waits for that one too
            if arg.startswith("--exit-timeout-secs="):
                drain = float(arg.split("=", 1)[1])
                self.exit_timeout_s = drain + min(defaults.SERVER_KILL_GRACE_S, drain)
        self.removed_stale_shm = remove_stale_shm()
        self._workdir = Path(tempfile.mkdtemp(prefix="triton-guard-"))
        if self.api_key_file is not None:
            fd = os.open(self.api_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.api_key + "\n")
        backend_dir = os.environ.get(ENV_BACKEND_DIR)
        if backend_dir is None:
            source = self.backends_source or BACKENDS_DIR
            backend_dir = str(build_backend_dir(self._workdir / "backends", source))
        env = server_environment()
        if env.get("PYTHONPATH"):  # what the caller runs is what the stubs import
            overlay = stub_python_overlay(self._workdir / "stub-python", env["PYTHONPATH"])
            env["PATH"] = f"{overlay}{os.pathsep}{env['PATH']}"
        # Breaker state shared by this server's stubs; removed with the workdir.
        env[defaults.STATE_DIR_ENV] = str(self.state_dir)
        # The canary reads the server's own metrics and metadata.
        env[defaults.HTTP_URL_ENV] = f"http://{self.http_url}"
        env[defaults.METRICS_URL_ENV] = self.metrics_url
        # The guards heal a dead upstream through the repository API: they need the key.
        env[defaults.API_KEY_ENV] = self.api_key
        env.pop(defaults.API_KEY_FILE_ENV, None)
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
        # Its task in the environment, not argv: only tritonserver and its stubs carry the prefix in theirs.
        watch = json.dumps([self.process.pid, self.shm_prefix, str(self._workdir), str(SHM_DIR)])
        self._watchdog = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(watchdog.__file__)],
            env={**os.environ, watchdog.TASK_ENV: watch},
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # not in a group a signal to serve's group reaches
        )
        # Where local tools find this server's key and repository by its port (removed at stop).
        self.local_records = local_record.record_server(self)
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
        # Ready means every endpoint answers: Triton opens its metrics port after
        # HTTP, so a caller reading /metrics right after HTTP's 200 could be refused.
        deadline = time.monotonic() + timeout_s
        pending = [f"http://{self.http_url}/v2/health/ready", self.metrics_url]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._pump.join(timeout=5)
                raise ServerError(self._startup_failure())
            try:
                with urllib.request.urlopen(pending[0], timeout=1) as resp:
                    if resp.status == 200:
                        pending.pop(0)
                        if not pending:
                            return
                        continue
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

    def stop(self, timeout_s: float | None = None) -> int | None:
        """SIGTERM the server (it unloads models and stops stubs), then clean the group.

        Triton waits drain_s for requests in flight (a hung model's never
        finish), then unloads; what is left at exit_timeout_s is SIGKILLed,
        so a stop takes at most exit_timeout_s (plus reaping). Shared memory
        of the server's prefix is removed whatever state its processes died in.
        """
        if timeout_s is None:
            timeout_s = self.exit_timeout_s
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
            wait_group_gone(proc.pid)
            remove_shm(self.shm_prefix)
            local_record.remove(self.local_records, proc.pid)
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # nothing left for it to do but remove what is already gone
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
            self._watchdog = None
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

