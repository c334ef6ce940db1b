"""The canary: its config, checks and report, its orchestration, goldens, memory and leak trend, the probe client.

Plain Python. runner.Canary runs the checks (golden inference for every model
with goldens, liveness, headroom, trend, stall, breakers, pins, drift) on facts
the `canary` backend (triton_guard.backends.canary) gathers inside the server;
config.py is its configuration, checks.py the verdicts, report.py the report,
golden_check.py the golden verdict, golden_store.py the goldens on disk,
server_http.py what it reads over Triton's HTTP endpoints; goldens.py is the
golden case format, record.py `triton-guard goldens record`, repository/ the
default `canary` model that `triton-guard serve` adds.
"""
