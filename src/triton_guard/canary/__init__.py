"""The canary: checks and their verdicts, its orchestration, goldens, memory and leak trend, the probe client.

Plain Python. runner.Canary runs the checks (golden inference for every model
with goldens, liveness, headroom, trend, stall, breakers, pins, drift) on facts
the `canary` backend (triton_guard.backends.canary) gathers inside the server;
goldens.py is the golden case format, record.py `triton-guard goldens record`,
repository/ the default `canary` model that `triton-guard serve` adds.
"""
