"""A new user's path, from a plain (non-editable) `pip install` of this checkout into a fresh venv.

    python scripts/check_fresh_install.py [--python python3] [--keep] [--out out/fresh_install]

In a temporary directory, outside the checkout: a fresh venv, `pip install`
of the project (no torch: the repository served here needs none), then, from
that directory, the commands of docs/guarding.md on a copy
of tests/integration/repos/foreign: `serve` with no repository (a clear
refusal), `backend-dir`, `guard add_sub --ensemble add_then_scale`, `serve
--model-repository`, one request to the guard and one through the ensemble
(answers checked against numpy), SIGTERM. Prints every command with what it
printed and the seconds each took; writes report.json under --out/<stamp>.
Exit 0 when every step did what docs/guarding.md says, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
FOREIGN = REPO_ROOT / "tests" / "integration" / "repos" / "foreign"
READY_TIMEOUT_S = 180.0


def free_ports(n: int = 3) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def user_env(venv: Path) -> dict[str, str]:
    """A shell with only the fresh venv: nothing of this checkout on any path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    return env


class Steps:
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def run(self, title: str, cmd: list[str], cwd: Path, env: dict, expect_rc: int = 0, timeout: float = 900) -> str:
        print(f"$ {' '.join(cmd)}", flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.monotonic() - started
        output = (proc.stdout + proc.stderr).strip()
        print("\n".join(f"  {line}" for line in output.splitlines()[-12:]))
        print(f"  [exit {proc.returncode}, {seconds:.1f} s]", flush=True)
        self.record(title, cmd, proc.returncode == expect_rc, seconds, output=output[-4000:], rc=proc.returncode)
        return output

    def record(self, title: str, cmd, ok: bool, seconds: float, **extra) -> None:
        self.steps.append({"step": title, "command": cmd, "ok": ok, "seconds": round(seconds, 2), **extra})

    @property
    def ok(self) -> bool:
        return all(s["ok"] for s in self.steps)


def infer_http(port: int, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    body = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()} for n, a in inputs.items()
        ]
    }
    request = urllib.request.Request(
        f"http://localhost:{port}/v2/models/{model}/infer", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        answer = json.loads(resp.read())
    return {o["name"]: np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in answer["outputs"]}


def wait_ready(port: int, server: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/v2/health/ready", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def check(python: str, work: Path) -> Steps:
    steps = Steps()
    venv, home = work / "venv", work / "home"
    home.mkdir()
    # The project as pip sees a source tree: copied, so the build leaves nothing in the checkout.
    source = work / "triton-guard"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "out", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "bench"))  # fmt: skip
    steps.run("create venv", [python, "-m", "venv", str(venv)], home, dict(os.environ))
    env = user_env(venv)
    steps.run("pip install", [str(venv / "bin" / "pip"), "install", "-q", str(source)], home, env)
    shutil.rmtree(source)  # the install must not depend on the source tree
    tg = "triton-guard"
    out = steps.run("serve without a repository", [tg, "serve"], home, env, expect_rc=1, timeout=60)
    if "no model repository" not in out:
        steps.steps[-1]["ok"] = False
    out = steps.run("backend-dir", [tg, "backend-dir"], home, env)
    backends = Path(out.strip().splitlines()[-1]) if out.strip() else Path("/nonexistent")
    steps.steps[-1]["ok"] &= all((backends / b / "model.py").is_file() for b in ("guard", "canary")) and str(
        backends
    ).startswith(str(venv))
    models = home / "my_models"
    shutil.copytree(FOREIGN, models, ignore=shutil.ignore_patterns("README.md", "FAULT"))
    steps.run(
        "guard",
        [tg, "guard", "add_sub", "--model-repository", "my_models", "--ensemble", "add_then_scale",
         "--param", "timeout_ms=2000"],
        home, env,
    )  # fmt: skip
    http, grpc, metrics = free_ports()
    cmd = [tg, "serve", "--model-repository", "my_models", "--http-port", str(http), "--grpc-port", str(grpc),
           "--metrics-port", str(metrics)]  # fmt: skip
    print(f"$ {' '.join(cmd)} &", flush=True)
    log = (work / "serve.log").open("w")
    started = time.monotonic()
    server = subprocess.Popen(cmd, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = wait_ready(http, server, READY_TIMEOUT_S)
        steps.record("serve until ready", cmd, ready, time.monotonic() - started)
        print(f"  [{'ready' if ready else 'NOT ready'} after {time.monotonic() - started:.1f} s]", flush=True)
        if ready:
            rng = np.random.default_rng(0)
            a, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
            for model, inputs, expected in (
                ("add_sub_guard", {"INPUT0": a, "INPUT1": b}, {"OUTPUT0": a + b, "OUTPUT1": a - b}),
                ("add_then_scale", {"A": a, "B": b}, {"SCALED_SUM": 2 * (a + b)}),
            ):
                t0 = time.monotonic()
                try:
                    answer = infer_http(http, model, inputs)
                    ok = all(np.allclose(answer[k], v, rtol=1e-6) for k, v in expected.items())
                    shown = {k: v.tolist() for k, v in answer.items()}
                except OSError as exc:
                    ok, shown = False, str(exc)
                print(f"$ curl .../v2/models/{model}/infer  -> {shown} ({'right' if ok else 'WRONG'})", flush=True)
                steps.record(f"infer {model}", ["POST", f"/v2/models/{model}/infer"], ok, time.monotonic() - t0)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            code = server.wait()
        log.close()
        steps.record("serve stops on SIGTERM", ["kill", "-TERM"], code == 0, 0.0, rc=code)
        if not steps.ok:
            print((work / "serve.log").read_text()[-3000:])
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter for the venv (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "fresh_install")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="triton-guard-fresh-"))
    started = time.monotonic()
    try:
        steps = check(args.python, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.out / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    report = {"ok": steps.ok, "total_seconds": round(total, 1), "load_average": os.getloadavg()[0], "steps": steps.steps}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    failed = [s["step"] for s in steps.steps if not s["ok"]]
    print(f"fresh install: {'ok' if steps.ok else 'FAILED: ' + ', '.join(failed)} in {total:.0f} s ({run_dir / 'report.json'})")
    return 0 if steps.ok else 1


if __name__ == "__main__":
    sys.exit(main())
