"""The guard: circuit breaker, bulkhead, hard deadline and failure classes.

Plain Python with injected time; nothing here imports Triton. The Triton
side (the `guard` backend and the library placement) is in
triton_guard.backends.
"""
