"""The pure parts of triton_guard.server: no tritonserver is started here."""

from __future__ import annotations

import filecmp
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from triton_guard import server as srv
from triton_guard.server import locate
from triton_guard.server import process as server_process
from triton_guard.server import (
    LocalServer,
    Ports,
    ServerError,
    build_backend_dir,
    check_model_repository,
    check_api_key,
    check_ports_free,
    is_loopback,
    remove_shm,
    remove_stale_shm,
    resolve_api_key,
    restricted_api_args,
    serve_forever,
    server_environment,
)
from triton_guard import defaults

PYTRITON = locate._pytriton_root()
DIST = PYTRITON / "tritonserver" if PYTRITON else None
needs_pytriton = pytest.mark.skipif(PYTRITON is None, reason="nvidia-pytriton is not installed")


def listening_socket(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((host, port))
    s.listen()
    return s


# --- Ports ------------------------------------------------------------------------


def test_free_ports_are_three_distinct_bindable_ports():
    ports = Ports.free()
    numbers = [ports.http, ports.grpc, ports.metrics]
    assert len(set(numbers)) == 3
    assert all(1024 <= p <= 65535 for p in numbers)
    held = []
    try:
        for p in numbers:  # as Triton binds them: all interfaces, listening
            held.append(listening_socket(p, "0.0.0.0"))
    finally:
        for s in held:
            s.close()


def test_ports_are_named_for_messages():
    assert Ports(1, 2, 3).named() == {"HTTP": 1, "gRPC": 2, "metrics": 3}


# --- check_ports_free ------------------------------------------------------------------


def test_check_ports_free_passes_when_nothing_listens():
    check_ports_free(Ports.free())


@pytest.mark.parametrize("which, name", [("http", "HTTP"), ("grpc", "gRPC"), ("metrics", "metrics")])
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_check_ports_free_names_the_taken_port(which, name, host):
    taken = listening_socket(host=host)
    try:
        port = taken.getsockname()[1]
        free = Ports.free()
        ports = Ports(**{**{"http": free.http, "grpc": free.grpc, "metrics": free.metrics}, which: port})
        with pytest.raises(ServerError) as err:
            check_ports_free(ports)
        assert str(err.value) == f"{name} port {port} is already in use"
    finally:
        taken.close()


def test_check_ports_free_reports_the_first_taken_port_in_order():
    a, b = listening_socket(), listening_socket()
    try:
        free = Ports.free()
        with pytest.raises(ServerError, match=rf"^gRPC port {a.getsockname()[1]} is already in use$"):
            check_ports_free(Ports(free.http, a.getsockname()[1], b.getsockname()[1]))
    finally:
        a.close()
        b.close()


# --- check_model_repository ----------------------------------------------------------------


def test_missing_repository_is_reported_with_its_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ServerError) as err:
        check_model_repository(missing)
    assert str(err.value) == f"model repository {missing} does not exist or is not a directory"


def test_a_file_is_not_a_repository(tmp_path):
    a_file = tmp_path / "repo.txt"
    a_file.write_text("")
    with pytest.raises(ServerError, match="does not exist or is not a directory"):
        check_model_repository(a_file)


@pytest.mark.parametrize("layout", ["empty", "folders without config.pbtxt or version"])
def test_repository_without_models_is_reported(tmp_path, layout):
    repo = tmp_path / "repo"
    repo.mkdir()
    if layout != "empty":
        (repo / "model_a" / "notes").mkdir(parents=True)
        (repo / "config.pbtxt").write_text("")  # at the top, not in a model folder
    with pytest.raises(ServerError) as err:
        check_model_repository(repo)
    assert str(err.value) == f"model repository {repo} holds no model (no */config.pbtxt, no */<version>/)"


def test_a_model_whose_config_is_completed_at_load_is_a_model(tmp_path):
    (tmp_path / "auto_complete" / "1").mkdir(parents=True)  # no config.pbtxt: Triton completes it at load
    check_model_repository(tmp_path)


def test_repository_with_one_model_passes(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('backend: "python"')
    check_model_repository(tmp_path)


# --- build_backend_dir ------------------------------------------------------------------------


@pytest.fixture
def backends_source(tmp_path):
    src = tmp_path / "backends"
    for name in ("guard", "canary"):
        (src / name).mkdir(parents=True)
        (src / name / "model.py").write_text("# a Python-based backend\n")
    (src / "notes").mkdir()  # no model.py: not a backend
    (src / "notes" / "README").write_text("")
    (src / "README.md").write_text("")
    return src


@needs_pytriton
def test_backend_dir_lays_out_the_python_backend(tmp_path, backends_source):
    target = build_backend_dir(tmp_path / "out", backends_source)
    python_dir = target / "python"

    lib = python_dir / "libtriton_python.so"
    # A real file: Triton refuses a backend library that resolves outside the backend dir.
    assert lib.is_file() and not lib.is_symlink()
    assert filecmp.cmp(lib, DIST / "backends" / "python" / "libtriton_python.so", shallow=False)

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = python_dir / "triton_python_backend_stub"
    assert stub.resolve() == (DIST / "python_backend_stubs" / version / "triton_python_backend_stub").resolve()
    assert os.access(stub, os.X_OK)
    utils = python_dir / "triton_python_backend_utils.py"
    assert utils.resolve() == (DIST / "backends" / "python" / "triton_python_backend_utils.py").resolve()


@needs_pytriton
def test_backend_dir_links_every_folder_with_a_model_py(tmp_path, backends_source):
    target = build_backend_dir(tmp_path / "out", backends_source)
    assert sorted(p.name for p in target.iterdir()) == ["canary", "guard", "python"]
    for name in ("guard", "canary"):
        link = target / name
        assert link.is_symlink()
        assert link.resolve() == (backends_source / name).resolve()
        assert (link / "model.py").read_text() == "# a Python-based backend\n"


@needs_pytriton
@pytest.mark.parametrize("source", [None, "missing"])
def test_backend_dir_without_backends_source_has_only_python(tmp_path, source):
    backends = None if source is None else tmp_path / source
    target = build_backend_dir(tmp_path / "out", backends)
    assert [p.name for p in target.iterdir()] == ["python"]


def test_backend_dir_reports_a_missing_stub_for_this_python(tmp_path, monkeypatch):
    fake_root = tmp_path / "pytriton"
    (fake_root / "tritonserver" / "python_backend_stubs" / "2.7").mkdir(parents=True)
    monkeypatch.setattr(locate, "_pytriton_root", lambda: fake_root)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(ServerError, match=rf"^nvidia-pytriton has no Python backend stub for Python {version}$"):
        build_backend_dir(tmp_path / "out", None)


# --- server_environment ----------------------------------------------------------------------


def test_environment_puts_this_interpreter_first_on_path():
    env = server_environment({"PATH": "/usr/local/bin:/usr/bin"})
    first, rest = env["PATH"].split(os.pathsep, 1)
    assert first == os.path.dirname(sys.executable)
    # The stub runs the python3 it finds first: it must be this interpreter (this venv's packages).
    assert os.path.samefile(Path(first) / "python3", sys.executable)
    assert rest == "/usr/local/bin:/usr/bin"


def test_environment_puts_libpython_first_and_keeps_the_callers_libraries():
    base = {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/custom/lib"}
    env = server_environment(base)
    dirs = env["LD_LIBRARY_PATH"].split(":")
    assert dirs[0] == sysconfig.get_config_var("LIBDIR")
    assert dirs[-1] == "/opt/custom/lib"
    if PYTRITON is not None:
        assert str(PYTRITON.parent / "nvidia_pytriton.libs") in dirs
    assert base == {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/custom/lib"}  # not modified


def test_environment_without_ld_library_path_has_no_empty_entry():
    env = server_environment({"PATH": "/usr/bin"})
    assert "" not in env["LD_LIBRARY_PATH"].split(":")
    assert env["LD_LIBRARY_PATH"].split(":")[0] == sysconfig.get_config_var("LIBDIR")


def test_environment_keeps_the_rest_of_the_base():
    env = server_environment({"PATH": "/usr/bin", "HOME": "/home/u", "TRITON_GUARD_X": "1"})
    assert env["HOME"] == "/home/u" and env["TRITON_GUARD_X"] == "1"


# --- LocalServer.command ------------------------------------------------------------------------


def test_command_runs_tritonserver_with_ports_repository_and_explicit_loading(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    server = LocalServer(model_repository=repo, ports=Ports(18000, 18001, 18002))
    cmd = server.command(tmp_path / "backends")

    assert Path(cmd[0]) == srv.find_tritonserver()
    args = cmd[1:]
    assert f"--model-repository={repo.resolve()}" in args
    assert f"--backend-directory={tmp_path / 'backends'}" in args
    assert {"--http-port=18000", "--grpc-port=18001", "--metrics-port=18002"} <= set(args)
    assert "--model-control-mode=explicit" in args
    assert "--load-model=*" in args
    assert not any(a.startswith("--model-config-name") for a in args)


def test_command_uses_the_gpu_configs_only_when_asked(tmp_path):
    gpu = LocalServer(model_repository=tmp_path, model_config_name="gpu").command(tmp_path)
    assert "--model-config-name=gpu" in gpu
    cpu = LocalServer(model_repository=tmp_path).command(tmp_path)
    assert not any(a.startswith("--model-config-name") for a in cpu)


def test_command_gives_each_server_its_own_shm_prefix_and_passes_extra_args_last(tmp_path):
    a = LocalServer(model_repository=tmp_path, ports=Ports(1, 2, 3), extra_args=("--log-verbose=1",))
    b = LocalServer(model_repository=tmp_path, ports=Ports(4, 5, 6))
    shm = [next(x for x in s.command(tmp_path) if "shm-region-prefix-name" in x) for s in (a, b)]
    assert shm[0] != shm[1]
    assert a.command(tmp_path)[-1] == "--log-verbose=1"


def test_tritonserver_can_be_overridden_for_the_image(monkeypatch):
    monkeypatch.setenv(srv.ENV_TRITONSERVER, "/opt/tritonserver/bin/tritonserver")
    assert srv.find_tritonserver() == Path("/opt/tritonserver/bin/tritonserver")


@needs_pytriton
def test_default_tritonserver_is_the_wheels_executable(monkeypatch):
    monkeypatch.delenv(srv.ENV_TRITONSERVER, raising=False)
    binary = srv.find_tritonserver()
    assert binary.is_file() and os.access(binary, os.X_OK)


# --- Triton's load-failure log line ------------------------------------------------------------


REAL_LOAD_FAILURE = (
    "E1127 17:53:10.123 5430 model_lifecycle.cc:641] \"failed to load 'classifier_guard' version 1: "
    "Invalid argument: backend library name 'libtriton_python.so' escapes backend directory\""
)


@pytest.mark.parametrize("ending", ["", "\n"], ids=["bare", "newline"])
def test_load_failure_regex_takes_model_and_reason(ending):
    match = server_process._LOAD_FAILURE.search(REAL_LOAD_FAILURE + ending)
    assert match is not None
    assert match.group(1) == "classifier_guard"
    assert match.group(2) == (
        "Invalid argument: backend library name 'libtriton_python.so' escapes backend directory"
    )


def test_load_failure_regex_reads_the_first_line_of_a_python_traceback():
    # A model.py that raises in initialize: Triton's message goes on over more lines.
    line = (
        "E1127 17:53:10.123 5430 model_lifecycle.cc:641] \"failed to load 'broken' version 1: "
        "Internal: ValueError: no weights here\n"
    )
    match = server_process._LOAD_FAILURE.search(line)
    assert (match.group(1), match.group(2)) == ("broken", "Internal: ValueError: no weights here")


def test_load_failure_regex_ignores_other_error_lines():
    line = 'E1127 17:53:10.200 5430 server.cc:305] "Failed to start the server: some models failed to load"'
    assert server_process._LOAD_FAILURE.search(line) is None


# --- serve_forever's signal handling (a stand-in for LocalServer, no tritonserver) ------------------


class _Process:
    def __init__(self, exited: int | None = None) -> None:
        self.returncode = exited

    def poll(self) -> int | None:
        return self.returncode


class StandInServer:
    """What serve_forever needs of a LocalServer; `on_start` runs once it is "up"."""

    def __init__(self, on_start=None, stop_code: int | None = -signal.SIGTERM, exited: int | None = None) -> None:
        self.ports = Ports(1, 2, 3)
        self.metrics_url = "http://localhost:3/metrics"
        self.connect_host = "localhost"
        self.api_key_source = "generated"
        self.api_key_file = "/run/key"
        self.removed_stale_shm = []
        self.local_records = []
        self.process = _Process(exited)
        self.on_start = on_start
        self.stop_code = stop_code
        self.stops = 0

    def start(self) -> None:
        if self.on_start:
            self.on_start()

    def stop(self) -> int | None:
        self.stops += 1
        return self.stop_code


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_stops_the_server_and_exits_0(signum):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    server = StandInServer(on_start=lambda: signal.raise_signal(signum))
    said = []

    code = serve_forever(server, announce=said.append)

    assert code == 0
    assert server.stops >= 1
    assert said[0].startswith("triton-guard: ready ")
    assert "http://localhost:1" in said[0] and "localhost:2" in said[0] and "http://localhost:3/metrics" in said[0]
    assert said[-1] == "triton-guard: stopping"
    # The caller's handlers are back (Ctrl-C raises KeyboardInterrupt again).
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_server_that_dies_on_its_own_makes_serve_fail():
    server = StandInServer(exited=137)
    said = []
    assert serve_forever(server, announce=said.append) == 1
    assert said[-1] == "triton-guard: tritonserver exited with status 137"
    assert server.stops >= 1


def test_an_unclean_stop_makes_serve_fail():
    server = StandInServer(on_start=lambda: signal.raise_signal(signal.SIGTERM), stop_code=-signal.SIGKILL)
    assert serve_forever(server, announce=lambda _: None) == 1


def test_load_failure_message_keeps_only_the_first_line_of_an_escaped_traceback():
    # What Triton logs when a model.py raises in initialize: newlines escaped as "\n".
    line = (
        "E1127 17:53:10.123 5430 model_lifecycle.cc:641] \"failed to load 'broken' version 1: "
        "Internal: RuntimeError: weights not found\\n\\nAt:\\n  /models/broken/1/model.py(3): initialize\\n\""
    )
    assert srv.load_failure(line) == "model 'broken' failed to load: Internal: RuntimeError: weights not found"
    assert srv.load_failure('I1127 "successfully loaded \'broken\'"') is None


# --- closed by default: restricted APIs, bind address -------------------------------------


def test_restricted_apis_take_the_key_on_http_and_grpc():
    args = restricted_api_args("k" * 20)
    rule = f"model-repository,shared-memory,trace,logging:{defaults.API_KEY_HEADER}={'k' * 20}"
    assert args == [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
    # inference, health and metadata stay open: clients, the probe and status use them
    assert not {"inference", "health", "metadata"} & set(defaults.RESTRICTED_APIS)


def test_api_key_from_environment_file_or_generated(tmp_path):
    assert resolve_api_key({defaults.API_KEY_ENV: " secret-from-env-123 \n"}) == ("secret-from-env-123", f"${defaults.API_KEY_ENV}")
    key_file = tmp_path / "key"
    key_file.write_text("secret-from-a-file-456\n")
    assert resolve_api_key({defaults.API_KEY_FILE_ENV: str(key_file)}) == ("secret-from-a-file-456", str(key_file))
    first, source = resolve_api_key({})
    assert source == "generated" and first != resolve_api_key({})[0] and check_api_key(first) == first
    key_file.write_text("\n")
    with pytest.raises(ServerError, match="is empty"):
        resolve_api_key({defaults.API_KEY_FILE_ENV: str(key_file)})
    with pytest.raises(ServerError, match="cannot read"):
        resolve_api_key({defaults.API_KEY_FILE_ENV: str(tmp_path / "absent")})


@pytest.mark.parametrize("bad", ["short", "has space in it......", "a:b=c-and-more-chars", "x" * 257])
def test_api_key_that_would_break_the_flag_is_refused(bad):
    with pytest.raises(ServerError, match="API key"):
        check_api_key(bad)


def test_command_binds_the_host_and_restricts_with_the_key(tmp_path):
    server = LocalServer(tmp_path, ports=Ports(1, 2, 3), host="10.1.2.3", api_key="k" * 20, exit_timeout_s=7)
    assert server.drain_s == 4 and LocalServer(tmp_path, exit_timeout_s=3).drain_s == 1
    cmd = server.command(tmp_path)
    for flag in ("--http-address=10.1.2.3", "--grpc-address=10.1.2.3", "--metrics-address=10.1.2.3", "--exit-timeout-secs=4"):
        assert flag in cmd
    assert [a for a in cmd if "restricted" in a] == restricted_api_args("k" * 20)
    assert server.grpc_url == "10.1.2.3:2" and server.admin_headers == {defaults.API_KEY_HEADER: "k" * 20}
    assert server.grpc_admin_headers == {f"triton-grpc-protocol-{defaults.API_KEY_HEADER}": "k" * 20}
    assert LocalServer(tmp_path).host == "127.0.0.1" and LocalServer(tmp_path, host="0.0.0.0").http_url.startswith("localhost:")


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_refuses_chaos_on_a_non_loopback_host_unless_told(capsys):
    from triton_guard.cli import main

    assert main(["serve", "--chaos", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote-chaos" in capsys.readouterr().err


# --- no debris -----------------------------------------------------------------------------


def test_stale_shm_of_dead_servers_goes_and_a_live_servers_stays(tmp_path):
    live_prefix, dead_prefix = f"{defaults.SHM_PREFIX}999991_1_", f"{defaults.SHM_PREFIX}999992_1_"
    for name in (f"{live_prefix}a", f"{live_prefix}b", f"{dead_prefix}a", f"{dead_prefix}b", "someone_else"):
        (tmp_path / name).write_bytes(b"x")
    # A process whose command line carries the prefix, as tritonserver and its stubs do.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"shm-region-prefix-name={live_prefix}"])
    try:
        for _ in range(200):  # until its command line is the one the scan looks for
            if live_prefix.encode() in Path(f"/proc/{holder.pid}/cmdline").read_bytes():
                break
            time.sleep(0.01)
        removed = remove_stale_shm(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(removed) == [f"{dead_prefix}a", f"{dead_prefix}b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone_else", f"{live_prefix}a", f"{live_prefix}b"]
    assert sorted(remove_shm(live_prefix, tmp_path)) == [f"{live_prefix}a", f"{live_prefix}b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone_else"]


def test_stub_overlay_puts_the_callers_pythonpath_before_its_packages(tmp_path):
    import site

    bin_dir = srv.stub_python_overlay(tmp_path / "overlay", f"/checkout/src{os.pathsep}{os.pathsep}relative")
    assert (bin_dir / "python3").resolve() == Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    assert (tmp_path / "overlay" / "pyvenv.cfg").read_text().startswith("home = ")
    (pth,) = (tmp_path / "overlay").glob("lib/python*/site-packages/*.pth")
    lines = pth.read_text().splitlines()
    assert lines[:2] == ["/checkout/src", os.path.abspath("relative")]
    assert lines[2:] == [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
    # An interpreter started from the overlay imports from the caller's path first.
    checkout = tmp_path / "checkout"
    (checkout / "marker_pkg").mkdir(parents=True)
    (checkout / "marker_pkg" / "__init__.py").write_text("")
    overlay2 = srv.stub_python_overlay(tmp_path / "overlay2", str(checkout))
    out = subprocess.run([str(overlay2 / "python3"), "-c", "import marker_pkg, sys; print(marker_pkg.__file__)"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin"}, timeout=60)
    assert out.stdout.strip() == str(checkout / "marker_pkg" / "__init__.py"), out.stderr


def test_tools_take_the_key_header_from_the_environment(tmp_path):
    assert srv.admin_headers_from_environment(grpc=True, environ={}) == {}
    env = {defaults.API_KEY_ENV: "a-key-of-sixteen-or-more"}
    assert srv.admin_headers_from_environment(grpc=False, environ=env) == {defaults.API_KEY_HEADER: "a-key-of-sixteen-or-more"}
    assert srv.admin_headers_from_environment(grpc=True, environ=env) == {defaults.GRPC_API_KEY_HEADER: "a-key-of-sixteen-or-more"}
    (tmp_path / "key").write_text("from-the-secret-file-1\n")
    assert srv.admin_headers_from_environment(grpc=False, environ={defaults.API_KEY_FILE_ENV: str(tmp_path / "key")}) == {
        defaults.API_KEY_HEADER: "from-the-secret-file-1"
    }
