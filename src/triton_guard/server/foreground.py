"""serve_forever: `triton-guard serve` in the foreground.

Starts a LocalServer, announces its endpoints and where the API key came from,
and stops it cleanly on SIGINT or SIGTERM (or reports tritonserver's exit).
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

from triton_guard import defaults
from triton_guard.server.process import LocalServer


def _print_now(line: str) -> None:
    # stdout is block-buffered when it is a pipe (docker logs, systemd, `| tee`):
    # without a flush the "ready" line would wait for Triton's next log line.
    print(line, flush=True)


def serve_forever(server: LocalServer, announce: Callable[[str], None] = _print_now) -> int:
    """Foreground serve: start, announce endpoints, stop cleanly on SIGINT/SIGTERM."""
    stop_requested = threading.Event()

    def request_stop(signum, _frame):
        stop_requested.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        if server.removed_stale_shm:
            announce(f"triton-guard: removed {len(server.removed_stale_shm)} stale shared-memory segment(s) of crashed servers")
        host = server.connect_host
        announce(
            "triton-guard: ready "
            f"HTTP http://{host}:{server.ports.http}  "
            f"gRPC {host}:{server.ports.grpc}  "
            f"metrics http://{host}:{server.ports.metrics}/metrics"
        )
        announce(
            f"triton-guard: {', '.join(defaults.RESTRICTED_APIS)} APIs need header "
            f"'{defaults.API_KEY_HEADER}' (key: {server.api_key_source}"
            + (f", written to {server.api_key_file}" if server.api_key_file else "")
            + ("; triton-guard's tools on this host find it by the server's port" if server.local_records else "")
            + ")"
        )
        while not stop_requested.is_set():
            if server.process.poll() is not None:
                announce(f"triton-guard: tritonserver exited with status {server.process.returncode}")
                return 1
            stop_requested.wait(0.5)
        announce("triton-guard: stopping")
        code = server.stop()
        return 0 if code in (0, -signal.SIGTERM) else 1
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
