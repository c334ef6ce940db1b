"""Writing a file at once, with the mode a new file gets."""

from __future__ import annotations

import os

import pytest

from triton_guard.files import write_bytes


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_file_gets_the_umasks_mode_not_mkstemps_private_one(tmp_path, umask_022):
    path = tmp_path / "case.golden.json"
    write_bytes(path, b"{}\n")
    assert path.read_bytes() == b"{}\n"
    assert path.stat().st_mode & 0o777 == 0o644  # readable by a server running as another user


def test_a_given_mode_is_kept_and_nothing_is_left_beside_the_file(tmp_path, umask_022):
    path = tmp_path / "config.pbtxt"
    path.write_bytes(b"old")
    write_bytes(path, b"new", 0o600)
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.pbtxt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.pbtxt"]
