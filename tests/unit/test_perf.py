"""perf_analyzer helpers: the CSV of a real run, the runtime library path, the command."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from triton_guard import perf
from triton_guard.perf import PerfAnalyzerError, PerfResult, parse_perf_csv, perf_analyzer_env

# Written by perf_analyzer 2.51.0 (`-i grpc -m pipeline --concurrency-range 1:8:7
# --input-data bench/digits_perf_input.json -f FILE`) against `triton-guard serve`.
REAL_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
1,405.431,5,498,3,71,1621,252,3,2345,2857,3435,5156
8,1121.21,6,2316,2,159,3743,889,3,6931,9262,10308,13024"""

# The same with --verbose-csv, which appends columns the parser ignores.
REAL_VERBOSE_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,response wait
1,394.053,5,505,2,73,1692,243,3,2398,2917,3399,4786,2526,8,2492
"""


def test_parses_every_concurrency_of_a_real_csv():
    assert parse_perf_csv(REAL_CSV) == [
        PerfResult(1, 405.431, 2345, 2857, 3435, 5156, server_queue_us=3, server_compute_us=71 + 1621 + 252),
        PerfResult(8, 1121.21, 6931, 9262, 10308, 13024, server_queue_us=2, server_compute_us=159 + 3743 + 889),
    ]


def test_extra_verbose_columns_are_ignored():
    (result,) = parse_perf_csv(REAL_VERBOSE_CSV)
    assert (result.throughput, result.p50_us, result.p99_us) == (394.053, 2398, 4786)


def test_server_columns_are_optional():
    # perf_analyzer leaves server-side columns out when it cannot read server statistics.
    text = "Concurrency,Inferences/Second,p50 latency,p90 latency,p95 latency,p99 latency\n4,100.5,1,2,3,4\n"
    (result,) = parse_perf_csv(text)
    assert result == PerfResult(4, 100.5, 1, 2, 3, 4)


def test_a_csv_without_rows_is_an_error():
    with pytest.raises(PerfAnalyzerError, match="no measurement"):
        parse_perf_csv(REAL_CSV.splitlines()[0] + "\n")


def test_env_puts_the_installed_cuda_runtime_first():
    lib_dir = perf.cuda_runtime_lib_dir()
    if lib_dir is None:
        pytest.skip("nvidia-cuda-runtime-cu12 is not installed (requirements/dev.txt)")
    assert (lib_dir / "libcudart.so.12").exists()
    env = perf_analyzer_env({"LD_LIBRARY_PATH": "/opt/other", "KEEP": "1"})
    assert env["LD_LIBRARY_PATH"] == f"{lib_dir}:/opt/other"
    assert env["KEEP"] == "1"


def test_env_falls_back_to_site_packages(monkeypatch, tmp_path):
    lib = tmp_path / "nvidia" / "cuda_runtime" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcudart.so.12").touch()
    monkeypatch.setattr(perf.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(perf.sysconfig, "get_paths", lambda: {"purelib": str(tmp_path)})
    assert perf_analyzer_env({})["LD_LIBRARY_PATH"] == str(lib)


def test_env_without_cuda_runtime_is_unchanged(monkeypatch):
    monkeypatch.setattr(perf, "cuda_runtime_lib_dir", lambda: None)
    assert perf_analyzer_env({"PATH": "/bin"}) == {"PATH": "/bin"}


def test_perf_analyzer_is_next_to_the_interpreter():
    assert perf.perf_analyzer_path() == Path(sys.executable).parent / "perf_analyzer"


def fake_perf_analyzer(tmp_path: Path, csv_text: str | None, exit_code: int = 0) -> Path:
    """A stand-in that logs its arguments and writes `csv_text` to the -f file."""
    script = tmp_path / "perf_analyzer"
    write_csv = f"cat > \"$out\" <<'CSV'\n{csv_text}\nCSV\n" if csv_text is not None else ""
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > "{tmp_path}/args"\n'
        'while [ $# -gt 0 ]; do [ "$1" = -f ] && out="$2"; shift; done\n'
        f"{write_csv}echo 'fake perf_analyzer output'\nexit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_run_passes_the_measurement_and_returns_the_first_row(monkeypatch, tmp_path):
    monkeypatch.setattr(perf, "perf_analyzer_path", lambda: fake_perf_analyzer(tmp_path, REAL_CSV))
    result = perf.run_perf_analyzer("pipeline", "localhost:9", 4, "data.json", 1500, ["--max-trials", "5"])
    assert result.concurrency == 1 and result.p99_us == 5156
    args = (tmp_path / "args").read_text().split("\n")
    expected = ["-i", "grpc", "-u", "localhost:9", "-m", "pipeline", "--concurrency-range", "4",
                "--input-data", "data.json", "--measurement-interval", "1500"]  # fmt: skip
    assert args[: len(expected)] == expected
    assert args[len(expected)] == "-f" and args[len(expected) + 2 : -1] == ["--max-trials", "5"]
    assert "--percentile" not in " ".join(args)  # it would change the stability criterion


@pytest.mark.parametrize("exit_code, csv_text", [(1, REAL_CSV), (0, None)])
def test_run_reports_failure_with_output(monkeypatch, tmp_path, exit_code, csv_text):
    monkeypatch.setattr(perf, "perf_analyzer_path", lambda: fake_perf_analyzer(tmp_path, csv_text, exit_code))
    with pytest.raises(PerfAnalyzerError, match="fake perf_analyzer output") as raised:
        perf.run_perf_analyzer("pipeline", "localhost:9", 1, "data.json", 1500)
    assert not raised.value.unstable


def test_run_tells_an_unstable_measurement_apart(monkeypatch, tmp_path):
    # What perf_analyzer 2.51.0 printed (exit status 2, no CSV) in a real run with --max-trials 3.
    output = (
        "Request concurrency: 4\n  Client: \n    Request count: 812\n"
        "Failed to obtain stable measurement within 3 measurement windows for concurrency 4. "
        "Please try to increase the --measurement-interval.\nFailed to obtain stable measurement.\n"
    )
    script = tmp_path / "perf_analyzer"
    script.write_text(f"#!/bin/sh\nprintf '{output}' >&2\nexit 2\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(perf, "perf_analyzer_path", lambda: script)
    with pytest.raises(PerfAnalyzerError) as raised:
        perf.run_perf_analyzer("pipeline", "localhost:9", 4, "data.json", 300)
    assert raised.value.unstable
    assert "Request count" not in str(raised.value)  # indented statistics are left out
    assert str(raised.value).endswith("Failed to obtain stable measurement.")


def test_wrapper_script_finds_the_runtime_libraries():
    if not perf.perf_analyzer_path().exists() or perf.cuda_runtime_lib_dir() is None:
        pytest.skip("perf_analyzer or nvidia-cuda-runtime-cu12 is not installed in this environment")
    wrapper = Path(__file__).resolve().parents[2] / "scripts" / "perf_analyzer.sh"
    env = {**os.environ, "VENV": sys.prefix}
    env.pop("LD_LIBRARY_PATH", None)
    proc = subprocess.run([str(wrapper), "--version"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Perf Analyzer Version 2.51.0" in proc.stdout + proc.stderr
