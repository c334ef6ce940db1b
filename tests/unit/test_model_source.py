"""triton_guard.model_source and the load-time interface check against a server's completed config (no Triton).

The server's side is a fake: a function for the tools' gRPC fetch, and a
small HTTP endpoint answering `GET /v2/models/M/config` as Triton 2.51 does
(400 and an error body for a model it has not loaded) for the stub's check.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from triton_guard import defaults, model_source
from triton_guard.model_config import CONFIG_FILE, ModelConfigError, check_guard_interface
from triton_guard.model_source import NotServed, completed, resolve, watch_until_served

# What Triton 2.51 answers for a Python model whose model.py auto-completes its config.
SERVED = """name: "auto" backend: "python" max_batch_size: 4
input { name: "INPUT0" data_type: TYPE_FP32 dims: 4 } output { name: "OUTPUT0" data_type: TYPE_FP32 dims: 4 }
dynamic_batching {} instance_group { name: "auto_0" kind: KIND_CPU count: 1 } default_model_filename: "model.py"
"""


def config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "auto" / "1").mkdir(parents=True)
    return tmp_path


def served(name: str) -> model_config_pb2.ModelConfig:
    if name != "auto":
        raise NotServed(f"the server at fake:8001 has not loaded it: Request for unknown model: '{name}' is not found")
    return config(SERVED)


def test_a_file_that_declares_the_tensors_is_the_source(repo):
    (repo / "auto" / CONFIG_FILE).write_text('backend: "python"\ninput { name: "X" data_type: TYPE_FP32 dims: 1 }\n'
                                             'output { name: "Y" data_type: TYPE_FP32 dims: 1 }\n')
    source = resolve(repo, "auto", fetch=lambda m: pytest.fail("asked the server"), server="fake:8001")
    assert not source.from_server and source.source == str(repo / "auto" / CONFIG_FILE)
    assert [t.name for t in source.config.input] == ["X"]


def test_no_config_file_takes_the_servers_completed_config(repo):
    source = resolve(repo, "auto", served, "fake:8001")
    assert source.from_server and source.on_disk is None
    assert "fake:8001" in source.source and f"{repo / 'auto'} has no {CONFIG_FILE}" in source.source
    c = source.config
    assert (c.name, c.backend, c.max_batch_size) == ("auto", "python", 4) and c.HasField("dynamic_batching")
    assert [t.name for t in c.input] == ["INPUT0"] and [t.name for t in c.output] == ["OUTPUT0"]
    assert not c.instance_group and not c.default_model_filename  # only what a config may leave to auto-complete


def test_a_file_without_tensors_keeps_its_own_settings_and_takes_the_interface(repo):
    (repo / "auto" / CONFIG_FILE).write_text(
        'backend: "python"\nmax_batch_size: 2\ninstance_group [{ kind: KIND_CPU, count: 3 }]\n')
    source = resolve(repo, "auto", served, "fake:8001")
    assert "declares no tensors" in source.source
    assert source.config.instance_group[0].count == 3  # the file's
    assert source.config.max_batch_size == 4  # the server's: what it runs
    assert source.config.name == "auto"


def test_no_server_to_ask_is_refused_naming_the_option(repo):
    with pytest.raises(ModelConfigError, match=r"has no config.pbtxt \(Triton completes it at load\): .*\(--url\)"):
        resolve(repo, "auto", None, "")


def test_a_server_that_cannot_say_is_refused_with_its_reason(repo):
    (repo / "other" / "1").mkdir(parents=True)
    with pytest.raises(ModelConfigError, match="has no config.pbtxt .* and the server at fake:8001 has not loaded it"):
        resolve(repo, "other", served, "fake:8001")


def test_completed_does_not_override_what_the_file_sets():
    on_disk = config('backend: "python" model_transaction_policy { decoupled: false } dynamic_batching { max_queue_delay_microseconds: 7 }')
    result = completed(on_disk, config(SERVED))
    assert result.dynamic_batching.max_queue_delay_microseconds == 7


# --- waiting for an upstream that loads after the guard ------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_watch_asks_until_the_server_has_the_model():
    answers = iter([NotServed("not up"), NotServed("not loaded"), config(SERVED)])

    def fetch(name):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    got, gave_up, clock = [], [], FakeClock()
    watch_until_served(fetch, "auto", got.append, gave_up.append, wait_s=10, poll_s=0.5,
                       sleep=clock.sleep, clock=lambda: clock.now)
    assert [c.name for c in got] == ["auto"] and gave_up == [] and clock.sleeps == [0.5, 0.5]


def test_watch_gives_up_at_its_deadline_with_the_last_reason():
    got, gave_up, clock = [], [], FakeClock()

    def fetch(name):
        raise NotServed("no version loaded")

    watch_until_served(fetch, "auto", got.append, gave_up.append, wait_s=2, poll_s=0.5,
                       sleep=clock.sleep, clock=lambda: clock.now)
    assert got == [] and gave_up == ["not served within 2 s (no version loaded)"] and len(clock.sleeps) == 4


def test_watch_stops_at_once_on_an_answer_it_cannot_use():
    gave_up = []

    def fetch(name):
        raise ModelConfigError("not a valid model config")

    watch_until_served(fetch, "auto", pytest.fail, gave_up.append, wait_s=60, sleep=pytest.fail, clock=lambda: 0.0)
    assert gave_up == ["not a valid model config"]


# --- the guard's load-time check, against a fake Triton HTTP endpoint -------------------------------


class FakeTriton(http.server.BaseHTTPRequestHandler):
    configs: dict[str, str] = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.split("/")[3]
        if name in self.configs:
            body, code = self.configs[name].encode(), 200
        else:
            body, code = json.dumps({"error": f"Request for unknown model: '{name}' is not found"}).encode(), 400
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def triton():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeTriton)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeTriton.configs = {}
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def guard_json(dims: int) -> str:
    guard = config(f'name: "auto_guard" backend: "guard" max_batch_size: 4 input {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} }}'
                   ' output { name: "OUTPUT0" data_type: TYPE_FP32 dims: 4 }')
    return json_format.MessageToJson(guard)


def test_the_check_asks_the_server_for_an_auto_completed_upstream(repo, triton):
    FakeTriton.configs["auto"] = json_format.MessageToJson(config(SERVED))
    env = {defaults.HTTP_URL_ENV: triton}
    assert check_guard_interface(repo / "auto_guard", guard_json(4), "auto", env) is None
    with pytest.raises(ModelConfigError, match=r"as the server completed it \(.* has no config.pbtxt\): input 'INPUT0' is TYPE_FP32 \[3\]"):
        check_guard_interface(repo / "auto_guard", guard_json(3), "auto", env)


def test_the_check_waits_for_an_upstream_not_loaded_yet_and_logs_a_mismatch(repo, triton, monkeypatch, capsys):
    threads = []
    monkeypatch.setattr(model_source, "watch_in_background",
                        lambda *args: threads.append(threading.Thread(target=watch_until_served, args=args)))
    unchecked = check_guard_interface(repo / "auto_guard", guard_json(3), "auto", {defaults.HTTP_URL_ENV: triton})
    assert "checked once the server has loaded it" in unchecked and len(threads) == 1
    FakeTriton.configs["auto"] = json_format.MessageToJson(config(SERVED))  # the upstream has loaded
    threads[0].start()
    threads[0].join(10)
    err = capsys.readouterr().err
    assert "error: guard model 'auto_guard' does not match upstream 'auto'" in err and "TYPE_FP32 [3]" in err


def test_the_check_without_a_server_url_says_what_it_did_not_check(repo):
    unchecked = check_guard_interface(repo / "auto_guard", guard_json(4), "auto", {})
    assert "not checked against upstream 'auto'" in unchecked and defaults.HTTP_URL_ENV in unchecked


def test_a_file_that_declares_the_tensors_is_checked_without_the_server(repo):
    (repo / "auto" / CONFIG_FILE).write_text(SERVED)
    with pytest.raises(ModelConfigError, match=r"its upstream's .*config.pbtxt: input 'INPUT0' is TYPE_FP32 \[3\]"):
        check_guard_interface(repo / "auto_guard", guard_json(3), "auto", {})
    assert Path(repo / "auto" / CONFIG_FILE).is_file()
