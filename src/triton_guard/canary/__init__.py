"""The canary: checks and their verdicts, goldens, memory and leak trend, the probe client.

Plain Python; the `canary` backend (triton_guard.backends.canary) gathers
facts inside the server and hands them to this package.
"""
