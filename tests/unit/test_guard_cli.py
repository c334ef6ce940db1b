"""`triton-guard guard` / `unguard` as commands, and the load commands they print (no Triton)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from triton_guard import cli, defaults
from triton_guard.guard_writer.commands import key_expression, server_lines
from triton_guard.model_config import CONFIG_FILE, read_config
from triton_guard.server.local_record import LocalRecord, write

FOREIGN = Path(__file__).resolve().parents[1] / "integration" / "repos" / "foreign"


@pytest.fixture
def repo(tmp_path):
    return Path(shutil.copytree(FOREIGN, tmp_path / "models"))


@pytest.fixture
def no_key(tmp_path, monkeypatch):
    monkeypatch.delenv(defaults.API_KEY_ENV, raising=False)
    monkeypatch.delenv(defaults.API_KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(defaults.RUN_DIR_ENV, str(tmp_path / "run"))


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    "argv, said",
    [
        ([], "give the MODEL to guard, or --all"),
        (["add_sub", "--all"], "give MODEL or --all, not both"),
        (["--all", "--in-process"], "--all picks the placement of each model"),
        (["add_sub", "--rename", "--ensemble", "add_then_scale"], "--ensemble with --rename"),
    ],
)
def test_usage_problems_are_refused_in_one_line(repo, capsys, argv, said):
    before = snapshot(repo)
    assert cli.main(["guard", *argv, "--model-repository", str(repo)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err
    assert snapshot(repo) == before


def test_in_process_and_rename_exclude_each_other(repo, capsys):
    assert cli.main(["guard", "add_sub", "--in-process", "--rename", "--model-repository", str(repo)]) == 2  # argparse


def test_guard_all_dry_run_prints_the_table_and_writes_nothing(repo, capsys, no_key):
    before = snapshot(repo)
    assert cli.main(["guard", "--all", "--dry-run", "--model-repository", str(repo), "--url", "localhost:1"]) == 0
    out = capsys.readouterr().out
    assert snapshot(repo) == before
    assert out.splitlines()[0].split() == ["MODEL", "BACKEND", "CONFIG", "FROM", "RESULT"]
    assert "3 to guard, 1 skipped" in out and "dry run: nothing written" in out and "curl" not in out


def test_guard_rename_then_unguard_through_the_command(repo, capsys, no_key):
    before = snapshot(repo)
    assert cli.main(["guard", "scale", "--rename", "--model-repository", str(repo), "--param", "timeout_ms=900"]) == 0
    out = capsys.readouterr().out
    assert read_config(repo / "scale" / CONFIG_FILE).backend == "guard"
    loads = [line.split()[-1] for line in out.splitlines() if line.strip().startswith("curl")]
    assert loads == ["localhost:8000/v2/repository/models/scale_unguarded/load", "localhost:8000/v2/repository/models/scale/load"]
    assert cli.main(["unguard", "scale", "--model-repository", str(repo)]) == 0
    out = capsys.readouterr().out
    assert snapshot(repo) == before
    assert [line.split()[-1].rsplit("/", 2)[-2:] for line in out.splitlines() if "curl" in line] == [
        ["scale", "load"], ["scale_unguarded", "unload"]]
    assert cli.main(["unguard", "scale", "--model-repository", str(repo)]) == 1
    assert "no guard of 'scale'" in capsys.readouterr().err


# --- the printed commands work pasted ------------------------------------------------------------------


def test_the_key_of_a_local_serve_is_read_from_its_file_when_pasted(tmp_path, no_key):
    key_file = tmp_path / "work dir" / "api-key"  # a space: the path is quoted for the shell
    key_file.parent.mkdir()
    key_file.write_text("generated-key-0123456789\n")
    write(LocalRecord(os.getpid(), "localhost", 18000, 18001, 18002, "/models", "generated", str(key_file)))
    lines = server_lines([("load", "m")], "localhost:18001")
    command = lines[1].strip()
    assert command.startswith("curl -s -X POST -H \"triton-guard-key: $(cat ") and "localhost:18000/v2" in command
    # What the shell makes of the header, as pasted: the key itself.
    header = command.split('-H "', 1)[1].split('" ', 1)[0]
    expanded = subprocess.run(["bash", "-c", f'printf %s "{header}"'], capture_output=True, text=True).stdout
    assert expanded == "triton-guard-key: generated-key-0123456789"


def test_without_a_local_serve_the_command_says_what_to_set(no_key):
    expression, note = key_expression(None, {})
    assert expression == "$TRITON_GUARD_API_KEY" and defaults.API_KEY_ENV in note
    assert key_expression(None, {defaults.API_KEY_ENV: "k" * 20}) == ("$TRITON_GUARD_API_KEY", "")
    assert key_expression(None, {defaults.API_KEY_FILE_ENV: "/s/key"}) == ('$(cat "$TRITON_GUARD_API_KEY_FILE")', "")
    # The process environment as no_key left it: no key, and a run dir of this test's own (a real serve on
    # localhost:8001 on this host, whose record lives in the default run dir, must not be found).
    lines = server_lines([("load", "m")], "localhost:8001")
    assert "set TRITON_GUARD_API_KEY" in lines[1] and '"triton-guard-key: $TRITON_GUARD_API_KEY"' in lines[2]
