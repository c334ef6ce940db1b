"""goldens record and drift record against a local serve: no key by hand, the repository it serves, where tensors came from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from triton_guard import defaults
from triton_guard.canary.record import RecordRefused, _check_known, default_repository
from triton_guard.drift.record import guard_parameters_text, renamed_guard_reference
from triton_guard.guard_writer import write_renamed
from triton_guard.model_source import served_tensors_source
from triton_guard.server.local_record import LocalRecord, write

FOREIGN = Path(__file__).resolve().parents[1] / "integration" / "repos" / "foreign"
RESTRICTED = "This protocol is restricted, expecting header 'triton-grpc-protocol-triton-guard-key'"


class FakeIndex:
    def __init__(self, models):
        self.models = [type("M", (), {"name": n, "state": s})() for n, s in models.items()]


class FakeClient:
    """tritonclient.grpc's calls _check_known makes, answered as a restricted or open server would."""

    def __init__(self, models, restricted, ready=True):
        self.models, self.restricted, self.ready, self.headers = models, restricted, ready, None

    def get_model_repository_index(self, headers, client_timeout):
        self.headers = headers
        if self.restricted and not headers:
            raise InferenceServerException(RESTRICTED)
        return FakeIndex(self.models)

    def is_model_ready(self, model, client_timeout):
        return self.ready and model in self.models


@pytest.fixture
def no_key(tmp_path, monkeypatch):
    monkeypatch.delenv(defaults.API_KEY_ENV, raising=False)
    monkeypatch.delenv(defaults.API_KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(defaults.RUN_DIR_ENV, str(tmp_path / "run"))
    return tmp_path


def test_without_a_key_the_recorder_does_not_need_the_restricted_index(no_key):
    _check_known(FakeClient({"m": "READY"}, restricted=True), "localhost:1", "m", 1.0)  # no refusal
    with pytest.raises(RecordRefused, match="model 'x' is not ready on localhost:1 \\(state not loaded\\)"):
        _check_known(FakeClient({"m": "READY"}, restricted=True), "localhost:1", "x", 1.0)


def test_with_the_local_servers_key_the_recorder_names_what_the_server_has(no_key):
    key_file = no_key / "api-key"
    key_file.write_text("generated-key-0123456789")
    write(LocalRecord(os.getpid(), "localhost", 18000, 18001, 18002, "/models", "generated", str(key_file)))
    client = FakeClient({"m": "READY", "n": "UNAVAILABLE"}, restricted=True)
    with pytest.raises(RecordRefused, match=r"has no model 'x' \(it has: m, n\)"):
        _check_known(client, "localhost:18001", "x", 1.0)
    assert client.headers == {defaults.GRPC_API_KEY_HEADER: "generated-key-0123456789"}


def test_the_default_repository_is_the_one_the_local_server_serves(no_key):
    assert default_repository("localhost:18001") == Path("model_repository")
    write(LocalRecord(os.getpid(), "localhost", 18000, 18001, 18002, "/srv/models", "generated", None))
    assert default_repository("localhost:18001") == Path("/srv/models")


def test_the_tools_say_where_the_tensors_came_from(tmp_path):
    (tmp_path / "auto" / "1").mkdir(parents=True)
    assert "has no config.pbtxt: completed at load" in served_tensors_source("h:1", tmp_path, "auto")
    shutil.copytree(FOREIGN / "add_sub", tmp_path / "add_sub")
    assert f"as {tmp_path / 'add_sub' / 'config.pbtxt'} declares them" in served_tensors_source("h:1", tmp_path, "add_sub")


def test_a_renamed_guard_is_told_where_its_drift_reference_is(tmp_path):
    repo = Path(shutil.copytree(FOREIGN, tmp_path / "models"))
    assert renamed_guard_reference(repo, "add_sub", "OUTPUT0") is None
    write_renamed(repo, "add_sub", {})
    reference = renamed_guard_reference(repo, "add_sub", "OUTPUT0")
    assert reference == "add_sub/drift/OUTPUT0.json"
    assert f'string_value: "{reference}"' in guard_parameters_text("OUTPUT0", "values", reference)
