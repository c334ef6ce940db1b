"""Every default of triton-guard, in one place.

Each value can be overridden where it is used (a model's config.pbtxt
`parameters`, a CLI flag); this module only names the starting point and the
reason for it. README.md carries the same table for users.
"""

# --- Server (ARCHITECTURE.md section 3) ------------------------------------
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
DEFAULT_URL = "localhost:8001"  # probe / status / chaos talk gRPC
SERVER_READY_TIMEOUT_S = 120.0  # serve: give up if models are not loaded by then
SERVER_STOP_TIMEOUT_S = 30.0  # serve: SIGTERM -> wait this long -> SIGKILL

# --- Guard (ARCHITECTURE.md section 4; values from the incident write-up) --
TIMEOUT_MS = 10_000  # hard deadline on every upstream call
FAILURE_THRESHOLD = 5  # consecutive failures that open the breaker
RECOVERY_MS = 30_000  # OPEN -> HALF_OPEN after this long
HALF_OPEN_MAX_CALLS = 1  # trial calls admitted in HALF_OPEN
MAX_INFLIGHT = 8  # bulkhead: upstream calls at once, per guard instance
# Failure-rate and slow-call trips over a count-based sliding window
# (resilience4j's model): they catch a flapping upstream that never produces
# `failure_threshold` failures in a row.
WINDOW_SIZE = 20  # last N completed calls
MINIMUM_CALLS = 10  # no rate trip before this many calls in the window
FAILURE_RATE_THRESHOLD = 0.5  # fraction of failed calls that opens
SLOW_CALL_MS = 5_000  # a call slower than this counts as slow
SLOW_CALL_RATE_THRESHOLD = 0.8  # fraction of slow calls that opens

# --- Shared breaker state (src/triton_guard/shared_state.py) ----------------
# One breaker state per server, shared by every guard stub process.
STATE_DIR_ENV = "TRITON_GUARD_STATE_DIR"  # overrides the state directory
STATE_DIR_BASE = "/dev/shm"  # tmpfs: state lives in RAM and dies with the host
STATE_DIR_PREFIX = "triton-guard-"  # + tritonserver pid: one directory per server
WINDOW_SIZE_MAX = 1024  # ring capacity in the state file (1 byte per call): bounds window_size
