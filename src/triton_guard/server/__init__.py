"""Run a real Triton 2.51 server from the PyPI wheels (or the production image).

The subpackage's public names, re-exported from its modules:
locate (finding tritonserver, the backend directory, the stubs' environment),
auth (the API key), shm (shared-memory cleanup), processes (the /proc scans),
process (LocalServer and its checks) and foreground (serve_forever). The
watchdog (watchdog.py) is a standalone program LocalServer runs by path.
"""

from triton_guard.errors import ServerError
from triton_guard.server.auth import (
    admin_headers_from_environment,
    check_api_key,
    is_loopback,
    resolve_api_key,
    restricted_api_args,
)
from triton_guard.server.foreground import serve_forever
from triton_guard.server.locate import (
    BACKENDS_DIR,
    CANARY_REPOSITORY,
    CHAOS_REPOSITORY,
    CONTROL_REPOSITORY,
    ENV_BACKEND_DIR,
    ENV_TRITONSERVER,
    PACKAGE_DIR,
    build_backend_dir,
    find_tritonserver,
    server_environment,
    set_chaos_mode,
    stub_python_overlay,
)
from triton_guard.server.process import LocalServer, Ports, check_model_repository, check_ports_free, load_failure
from triton_guard.server.processes import stub_pids
from triton_guard.server.shm import SHM_DIR, remove_shm, remove_stale_shm

__all__ = [
    "BACKENDS_DIR",
    "CANARY_REPOSITORY",
    "CHAOS_REPOSITORY",
    "CONTROL_REPOSITORY",
    "ENV_BACKEND_DIR",
    "ENV_TRITONSERVER",
    "PACKAGE_DIR",
    "SHM_DIR",
    "LocalServer",
    "Ports",
    "ServerError",
    "admin_headers_from_environment",
    "build_backend_dir",
    "check_api_key",
    "check_model_repository",
    "check_ports_free",
    "find_tritonserver",
    "is_loopback",
    "load_failure",
    "remove_shm",
    "remove_stale_shm",
    "resolve_api_key",
    "restricted_api_args",
    "serve_forever",
    "server_environment",
    "set_chaos_mode",
    "stub_pids",
    "stub_python_overlay",
]
