"""`triton-guard serve` as a user runs it: the installed command, in a subprocess.

One real server start runs the project's repository to SIGTERM; the other
tests fail before a server is up (or, for a model that cannot load, while it
starts), and check the one line the user is told.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import wait_until
from tests.integration.conftest import MODEL_REPOSITORY, metric
from triton_guard.defaults import STATE_DIR_ENV
from triton_guard_demo.digits import heldout_split, load_digits_uint8
from triton_guard.server import Ports

pytestmark = pytest.mark.integration

TRITON_GUARD = Path(sys.executable).parent / "triton-guard"
READY_TIMEOUT_S = 180.0  # a loaded 2-core runner has needed 50 s to load every model
STOP_TIMEOUT_S = 15.0
PREFIX = "triton-guard serve: error: "


def user_env() -> dict[str, str]:
    env = dict(os.environ)
    # As a user (or docker, or systemd) runs it: stdout is a pipe and block-buffered.
    env.pop("PYTHONUNBUFFERED", None)
    return env


def serve_command(repository: Path, ports: Ports, *extra: str) -> list[str]:
    return [
        str(TRITON_GUARD),
        "serve",
        "--model-repository",
        str(repository),
        "--http-port",
        str(ports.http),
        "--grpc-port",
        str(ports.grpc),
        "--metrics-port",
        str(ports.metrics),
        *extra,
    ]


def run_serve(args: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=user_env())


# --- /proc ------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, str, int, int] | None:
    """(comm, state, ppid, pgid) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    state, ppid, pgid = raw[raw.rindex(")") + 2 :].split()[:3]
    return comm, state, int(ppid), int(pgid)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def live_processes() -> dict[int, tuple[str, str, int, int]]:
    """Every process that still runs (zombies have already exited: left out)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[1] != "Z":
                found[int(entry)] = stat
    return found


def tritonserver_child(serve_pid: int) -> int:
    children = [
        pid for pid, (comm, _, ppid, _) in live_processes().items() if ppid == serve_pid and comm == "tritonserver"
    ]
    assert len(children) == 1, f"serve ({serve_pid}) should run exactly one tritonserver: {children}"
    return children[0]


def in_group(pgid: int) -> dict[int, str]:
    return {pid: cmdline(pid) for pid, stat in live_processes().items() if stat[3] == pgid}


def mentioning(shm_prefix: str) -> dict[int, str]:
    """Live processes of one server: tritonserver and its stubs carry its shm prefix."""
    return {pid: line for pid in live_processes() if shm_prefix in (line := cmdline(pid))}


def stubs_of(shm_prefix: str) -> dict[int, str]:
    return {pid: line for pid, line in mentioning(shm_prefix).items() if "triton_python_backend_stub" in line}


class Output:
    """Collects a pipe line by line on a thread (the child never blocks on a full pipe)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line)
            self.queue.put(line)

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "".join(self.lines)


def http_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://localhost:{port}/v2/health/ready", timeout=0.5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


# --- the one real start ---------------------------------------------------------------------


def test_serve_answers_then_stops_on_sigterm_and_leaves_nothing_behind(tmp_path):
    ports = Ports.free()
    proc = subprocess.Popen(
        serve_command(MODEL_REPOSITORY, ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=user_env(),
    )
    out, err = Output(proc.stdout), Output(proc.stderr)
    triton_pid = None
    try:
        # 1. A "ready" line naming the three endpoints, as soon as the server is ready.
        ready_line, http_ready_at = None, None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while ready_line is None:
            assert time.monotonic() < deadline, f"no ready line in {READY_TIMEOUT_S} s:\n{out.text()[-3000:]}"
            assert proc.poll() is None, f"serve exited {proc.returncode}: {err.text()}\n{out.text()[-3000:]}"
            try:
                line = out.queue.get(timeout=0.1)
            except queue.Empty:
                line = ""
            if line.startswith("triton-guard:") and "ready" in line:
                ready_line, ready_at = line, time.monotonic()
            elif http_ready_at is None and http_ready(ports.http):
                http_ready_at = time.monotonic()
        # Told without waiting for Triton to log something else (stdout is a pipe).
        assert http_ready_at is None or ready_at - http_ready_at < 3.0, ready_at - http_ready_at
        assert f"http://localhost:{ports.http}" in ready_line
        assert f"localhost:{ports.grpc}" in ready_line
        assert f"http://localhost:{ports.metrics}/metrics" in ready_line

        # 2. The endpoints it announced work: pipeline over gRPC gives the right digits.
        assert http_ready(ports.http)
        _, _, test_x, test_y = heldout_split(*load_digits_uint8())
        client = grpcclient.InferenceServerClient(f"localhost:{ports.grpc}")
        image = grpcclient.InferInput("IMAGE", [10, 8, 8], "UINT8")
        image.set_data_from_numpy(test_x[:10])
        labels = client.infer("pipeline", [image]).as_numpy("LABEL").reshape(-1)
        # Ground truth from the data set; the model is ~97 % accurate on held-out digits.
        assert (labels == test_y[:10]).sum() >= 9, (labels, test_y[:10])
        with urllib.request.urlopen(f"http://localhost:{ports.metrics}/metrics", timeout=5) as resp:
            assert 'nv_inference_request_success{model="pipeline"' in resp.read().decode()

        # 3. What must be gone afterwards: tritonserver in its own process group,
        #    its stubs in that group, and this server's shared-memory regions.
        triton_pid = tritonserver_child(proc.pid)
        assert proc_stat(triton_pid)[3] == triton_pid  # leads its own group
        shm_prefix = f"triton_guard_{proc.pid}_{ports.grpc}_"
        stubs = stubs_of(shm_prefix)
        assert stubs, "the scan must see the running stubs, or 'none left' below proves nothing"
        assert set(mentioning(shm_prefix)) == {triton_pid, *stubs}
        assert set(stubs) <= set(in_group(triton_pid))
        workdir = Path(environ(triton_pid)[STATE_DIR_ENV]).parent  # serve's private folder
        assert workdir.is_dir()
        assert any(p.name.startswith(shm_prefix) for p in Path("/dev/shm").iterdir())

        # 4. SIGTERM: a clean stop, exit status 0.
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running {STOP_TIMEOUT_S} s after SIGTERM:\n{out.text()[-3000:]}")
        assert code == 0, f"exit status {code}\nstderr: {err.text()}\n{out.text()[-3000:]}"
        assert "triton-guard: stopping\n" in out.text()
        assert err.text() == ""

        assert in_group(triton_pid) == {}
        assert mentioning(shm_prefix) == {}
        assert [p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(shm_prefix)] == []
        assert not workdir.exists()
    finally:
        # After a failure: never leave a server behind (its group outlives a killed serve).
        groups = {pid for pid, stat in live_processes().items() if stat[2] == proc.pid and stat[3] == pid}
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pgid in groups | ({triton_pid} if triton_pid else set()):
            if in_group(pgid):
                os.killpg(pgid, signal.SIGKILL)
        (tmp_path / "serve.log").write_text(out.text())  # the whole Triton log, for a failure


# --- refusals before any server runs -----------------------------------------------------------


def test_port_in_use_is_one_line_and_exit_1():
    ports = Ports.free()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.http))
        taken.listen()
        started = time.monotonic()
        result = run_serve(serve_command(MODEL_REPOSITORY, ports))
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr == f"{PREFIX}HTTP port {ports.http} is already in use\n"
    assert result.stdout == ""  # no tritonserver ran: it would have logged here
    assert elapsed < 30  # refused before starting anything (a server start alone takes 10-90 s here)


def test_missing_repository_is_one_line_and_exit_1(tmp_path):
    missing = tmp_path / "no-such-repository"
    result = run_serve(serve_command(missing, Ports.free()))
    assert result.returncode == 1
    assert result.stderr == f"{PREFIX}model repository {missing} does not exist or is not a directory\n"
    assert result.stdout == ""


def test_repository_without_models_is_one_line_and_exit_1(tmp_path):
    empty = tmp_path / "repository"
    empty.mkdir()
    result = run_serve(serve_command(empty, Ports.free()))
    assert result.returncode == 1
    assert result.stderr == f"{PREFIX}model repository {empty} holds no model (no */config.pbtxt)\n"
    assert result.stdout == ""


def test_bad_usage_exits_2():
    result = run_serve([str(TRITON_GUARD), "serve", "--http-port", "notaport"])
    assert result.returncode == 2
    assert "--http-port: invalid int value: 'notaport'" in result.stderr
    assert result.stdout == ""


# --- a model that fails to load (tritonserver starts, briefly) ----------------------------------


def test_model_that_fails_to_load_is_named_with_its_reason(tmp_path):
    repo = tmp_path / "repository"
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text(
        textwrap.dedent(
            """\
            backend: "python"
            max_batch_size: 0
            input [{ name: "X", data_type: TYPE_FP32, dims: [1] }]
            output [{ name: "Y", data_type: TYPE_FP32, dims: [1] }]
            instance_group [{ kind: KIND_CPU, count: 1 }]
            """
        )
    )
    (repo / "broken" / "1" / "model.py").write_text(
        textwrap.dedent(
            """\
            class TritonPythonModel:
                def initialize(self, args):
                    raise RuntimeError("weights file zz-missing-weights.bin not found")
            """
        )
    )
    ports = Ports.free()
    proc = subprocess.Popen(
        serve_command(repo, ports), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=user_env()
    )
    try:
        stdout, stderr = proc.communicate(timeout=READY_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 1, stdout[-3000:]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{PREFIX}model 'broken' failed to load: ")
    assert "weights file zz-missing-weights.bin not found" in lines[0]
    assert "failed to load 'broken'" in stdout  # Triton's own log went to stdout, as it does when serving
    # Nothing of that server is left running.
    assert mentioning(f"triton_guard_{proc.pid}_{ports.grpc}_") == {}


# --- no debris: SIGTERM during a hang, SIGKILL of serve itself ---------------------------------


def _start_chaos_serve(tmp_path, ports, exit_timeout_s):
    proc = subprocess.Popen(
        serve_command(MODEL_REPOSITORY, ports, "--chaos", "--exit-timeout", str(exit_timeout_s)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=user_env(),
    )
    out = Output(proc.stdout)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not http_ready(ports.http):
        assert time.monotonic() < deadline, f"not ready in {READY_TIMEOUT_S} s:\n{out.text()[-3000:]}"
        assert proc.poll() is None, out.text()[-3000:]
        time.sleep(0.2)
    return proc, out


def _hang_the_classifier(triton_pid: int, ports: Ports, requests: int = 4) -> None:
    chaos_dir = Path(environ(triton_pid)["TRITON_GUARD_CHAOS_DIR"])
    # The classifier of pipeline_unguarded (`classifier` is the one pipeline guards in-process).
    (chaos_dir / "classifier_unguarded.json").write_text('{"kind": "hang"}')
    metrics_url = f"http://localhost:{ports.metrics}/metrics"
    preprocessed = metric(metrics_url, "nv_inference_request_success", model="preprocess")

    def hung() -> None:
        client = grpcclient.InferenceServerClient(f"localhost:{ports.grpc}")
        image = grpcclient.InferInput("IMAGE", [1, 8, 8], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 8, 8), np.uint8))
        try:
            client.infer("pipeline_unguarded", [image], client_timeout=120)
        except Exception:
            pass  # the server went away under it: expected

    for _ in range(requests):
        threading.Thread(target=hung, daemon=True).start()
    # Past `preprocess`, the next step is the hung classifier (a canary golden request
    # through `pipeline` may count here too: then all but one of them are).
    wait_until(
        lambda: metric(metrics_url, "nv_inference_request_success", model="preprocess") >= preprocessed + requests,
        30,
        "the requests in the hung classifier",
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stop_during_a_hang_leaves_no_process_and_no_shared_memory(tmp_path, signum):
    stale = Path("/dev/shm") / "triton_guard_999999999_1_left-by-a-crash"
    stale.write_bytes(b"x")  # a prefix no live process uses: removed at start
    ports = Ports.free()
    exit_timeout_s = 4
    proc, out = _start_chaos_serve(tmp_path, ports, exit_timeout_s)
    triton_pid = None
    try:
        assert not stale.exists(), "stale segment of a crashed server left at start"
        shm_prefix = f"triton_guard_{proc.pid}_{ports.grpc}_"
        triton_pid = tritonserver_child(proc.pid)
        workdir = Path(environ(triton_pid)[STATE_DIR_ENV]).parent
        running, segments = mentioning(shm_prefix), [p for p in Path("/dev/shm").iterdir() if p.name.startswith(shm_prefix)]
        assert len(running) >= 5 and segments, (running, segments)  # the counts below prove something
        _hang_the_classifier(triton_pid, ports)
        sent = time.monotonic()
        proc.send_signal(signum)
        if signum == signal.SIGTERM:
            proc.wait(timeout=exit_timeout_s + 10)
            took = time.monotonic() - sent
            # serve's exit timeout bounds the stop (plus reaping): was Triton's 30 s, then an unbounded hung stub.
            assert took <= exit_timeout_s + 1.5, took
        else:
            proc.wait(timeout=10)
        wait_until_gone = time.monotonic() + 5
        while (mentioning(shm_prefix) or workdir.exists()) and time.monotonic() < wait_until_gone:
            time.sleep(0.1)
        print(f"{signal.Signals(signum).name}: before {len(running)} processes, {len(segments)} segments; "
              f"after {len(mentioning(shm_prefix))} processes, "
              f"{len([p for p in Path('/dev/shm').iterdir() if p.name.startswith(shm_prefix)])} segments")
        assert mentioning(shm_prefix) == {}
        assert [p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(shm_prefix)] == []
        assert not workdir.exists()
    finally:
        stale.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if triton_pid and in_group(triton_pid):
            os.killpg(triton_pid, signal.SIGKILL)
        (tmp_path / "serve.log").write_text(out.text())
