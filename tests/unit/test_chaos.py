"""Fault injection's wiring into the launcher and the CLI, without a server."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from triton_guard import cli, defaults
from triton_guard.server import CHAOS_REPOSITORY, PACKAGE_DIR, LocalServer, set_chaos_mode

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- launcher and CLI wiring -----------------------------------------------


def test_set_chaos_mode_arms_or_disarms_the_hooks(tmp_path):
    env = {defaults.CHAOS_DIR_ENV: "/left/over", "OTHER": "1"}
    assert set_chaos_mode(dict(env), None) == {"OTHER": "1"}
    armed = set_chaos_mode(dict(env), tmp_path / "chaos")
    assert armed[defaults.CHAOS_DIR_ENV] == str(tmp_path / "chaos") and (tmp_path / "chaos").is_dir()


def test_only_a_chaos_server_serves_the_chaos_repository(tmp_path):
    for own in (defaults.CANARY_MODEL, defaults.CONTROL_MODEL):  # its own: no default canary or control repository either
        (tmp_path / own).mkdir()
        (tmp_path / own / "config.pbtxt").write_text("")
    plain = LocalServer(model_repository=tmp_path).command(tmp_path / "backends")
    chaotic = LocalServer(model_repository=tmp_path, chaos=True).command(tmp_path / "backends")
    repositories = lambda cmd: [a for a in cmd if a.startswith("--model-repository=")]  # noqa: E731
    assert repositories(plain) == [f"--model-repository={tmp_path.resolve()}"]
    assert repositories(chaotic) == [*repositories(plain), f"--model-repository={CHAOS_REPOSITORY}"]
    config = (CHAOS_REPOSITORY / defaults.CHAOS_MODEL / "config.pbtxt").read_text()
    assert f'name: "{defaults.CHAOS_MODEL}"' in config
    assert LocalServer(model_repository=tmp_path).chaos_dir is None


def test_the_chaos_repository_is_package_data():
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = PACKAGE_DIR
    files = [p.relative_to(package).as_posix() for p in CHAOS_REPOSITORY.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns["triton_guard"]), name


@pytest.mark.parametrize("argv, chaos", [(["serve"], False), (["serve", "--chaos"], True)])
def test_serve_passes_chaos_to_the_server(monkeypatch, argv, chaos):
    started = []
    monkeypatch.setattr("triton_guard.server.serve_forever", lambda server: started.append(server) or 0)
    assert cli.main(argv) == 0
    assert started[0].chaos is chaos


def test_chaos_command_defaults():
    args = cli.build_parser().parse_args(["chaos", "leak"])
    assert (args.model, args.url) == (defaults.CHAOS_TARGET_MODEL, defaults.DEFAULT_URL)
    assert (args.slow_ms, args.leak_mb_per_s, args.leak_cap_mb) == (
        defaults.CHAOS_SLOW_MS,
        defaults.CHAOS_LEAK_MB_PER_S,
        defaults.CHAOS_LEAK_CAP_MB,
    )
    assert (args.drift_scale, args.seed, args.timeout) == (
        defaults.CHAOS_DRIFT_SCALE,
        defaults.CHAOS_DRIFT_SEED,
        defaults.CHAOS_TIMEOUT_S,
    )


def test_chaos_bad_usage_exits_2_before_any_network_call(capsys):
    assert cli.main(["chaos", "melt"]) == 2
    assert "invalid choice: 'melt'" in capsys.readouterr().err
    assert cli.main(["chaos", "slow", "--slow-ms", "0", "--url", "unused:1"]) == 2
    err = capsys.readouterr().err
    assert "slow_ms must be > 0" in err and "unreachable" not in err
