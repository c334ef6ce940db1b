"""server/local_record.py and auth.api_key_for: local tools find a local serve's key by its port (no server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from triton_guard import defaults
from triton_guard.server import local_record
from triton_guard.server.auth import admin_headers_for, api_key_for, is_restricted_refusal, restricted_hint
from triton_guard.server.local_record import LocalRecord, find, for_url, record_server, remove, split_url, write


@pytest.fixture
def env(tmp_path):
    """An environment whose run directory is private to the test, and no key set by hand."""
    return {defaults.RUN_DIR_ENV: str(tmp_path / "run")}


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "work" / "api-key"
    path.parent.mkdir(mode=0o700)
    path.write_text("generated-key-0123456789\n")
    return path


def record(key_file, pid=None, **changes) -> LocalRecord:
    fields = dict(pid=pid or os.getpid(), host="localhost", http_port=18000, grpc_port=18001, metrics_port=18002,
                  model_repository="/models", key_source="generated", key_file=str(key_file))
    fields.update(changes)
    return LocalRecord(**fields)


def test_a_record_is_found_by_either_port_in_a_private_directory(env, key_file):
    paths = write(record(key_file), env)
    directory = Path(env[defaults.RUN_DIR_ENV])
    assert directory.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in paths) and len(paths) == 2
    assert find(18000, env).grpc_port == 18001 and find(18001, env).http_port == 18000
    assert find(18002, env) is None  # the metrics port has no record


def test_a_record_of_a_server_that_is_gone_is_ignored_and_removed(env, key_file):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths = write(record(key_file, pid=dead.pid), env)
    assert find(18001, env) is None
    assert not paths[1].exists()


def test_remove_leaves_a_record_another_server_wrote_since(env, key_file):
    paths = write(record(key_file), env)
    remove(paths, pid=os.getpid() + 100000)  # not ours
    assert all(p.exists() for p in paths)
    remove(paths, pid=os.getpid())
    assert not any(p.exists() for p in paths)


def test_a_run_directory_others_can_read_is_not_used(env, key_file):
    directory = Path(env[defaults.RUN_DIR_ENV])
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    assert write(record(key_file), env) == []
    assert find(18001, env) is None


def test_a_link_is_not_a_run_directory(tmp_path, key_file):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert write(record(key_file), {defaults.RUN_DIR_ENV: str(tmp_path / "link")}) == []


@pytest.mark.parametrize(
    "url, host, port",
    [("localhost:8001", "localhost", 8001), ("http://127.0.0.1:8000/v2", "127.0.0.1", 8000), ("[::1]:8001", "::1", 8001),
     ("somehost", "somehost", None)],
)
def test_split_url(url, host, port):
    assert split_url(url) == (host, port)


def test_only_a_loopback_url_finds_a_local_record(env, key_file):
    write(record(key_file), env)
    assert for_url("127.0.0.1:18001", env) is not None
    assert for_url("10.1.2.3:18001", env) is None


# --- the key a tool sends ---------------------------------------------------------------------------


def test_the_tools_find_the_key_of_a_local_server_with_nothing_set(env, key_file):
    write(record(key_file), env)
    key, where = api_key_for("localhost:18001", env)
    assert key == "generated-key-0123456789" and str(key_file) in where
    assert admin_headers_for("localhost:18001", grpc=True, environ=env) == {defaults.GRPC_API_KEY_HEADER: key}
    assert admin_headers_for("localhost:18000", grpc=False, environ=env) == {defaults.API_KEY_HEADER: key}


def test_the_servers_own_key_wins_over_an_unrelated_one_in_the_environment(env, key_file):
    write(record(key_file), env)
    env[defaults.API_KEY_ENV] = "some-other-servers-key-000"
    assert api_key_for("localhost:18001", env)[0] == "generated-key-0123456789"
    assert api_key_for("localhost:19999", env)[0] == "some-other-servers-key-000"  # no local server there


def test_no_key_anywhere_is_none(env):
    assert api_key_for("localhost:18001", env) == (None, "")
    assert admin_headers_for("localhost:18001", grpc=True, environ=env) == {}


def test_the_restricted_refusal_says_what_to_set():
    assert is_restricted_refusal("This protocol is restricted, expecting header 'triton-grpc-protocol-triton-guard-key'")
    hint = restricted_hint("localhost:8001")
    assert defaults.API_KEY_ENV in hint and defaults.API_KEY_FILE_ENV in hint and "localhost:8001" in hint


# --- what a LocalServer records ---------------------------------------------------------------------


def fake_server(tmp_path, source, key_file=None):
    return SimpleNamespace(
        api_key_source=source, api_key_file=key_file, process=SimpleNamespace(pid=os.getpid()),
        connect_host="localhost", ports=SimpleNamespace(http=18000, grpc=18001, metrics=18002),
        model_repository=tmp_path,
    )


@pytest.mark.parametrize(
    "source, has_file, recorded",
    [("generated", True, "work/api-key"), ("/secrets/api-key", False, "/secrets/api-key"),
     (f"${defaults.API_KEY_ENV}", False, None), ("given", False, None)],
)
def test_the_record_names_the_key_file_never_a_key_from_the_environment(
    tmp_path, env, key_file, monkeypatch, source, has_file, recorded
):
    monkeypatch.setenv(defaults.RUN_DIR_ENV, env[defaults.RUN_DIR_ENV])
    paths = record_server(fake_server(tmp_path, source, key_file if has_file else None))
    found = find(18001, env)
    assert len(paths) == 2 and found.model_repository == str(tmp_path)
    if recorded is None:
        assert found.key_file is None
    else:
        assert found.key_file.endswith(recorded)
    assert "generated-key" not in paths[0].read_text()  # the key itself is never in the record
    local_record.remove(paths, os.getpid())
