"""Every default of triton-guard, in one place.

Each value can be overridden where it is used (a model's config.pbtxt
`parameters`, a CLI flag); this module only names the starting point and the
reason for it. The docs' parameter reference (docs/reference/parameters.md) is
generated from this file: each constant with its value and its comment, under
its `# --- Section` header.
"""

# --- Server ---------------------------------------------------------------
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
DEFAULT_URL = "localhost:8001"  # probe / status / chaos talk gRPC
SERVER_READY_TIMEOUT_S = 120.0  # serve: give up if models are not loaded by then
SERVER_STOP_TIMEOUT_S = 30.0  # serve --exit-timeout: a stop takes at most this long, hung models or not
SERVER_KILL_GRACE_S = 3.0  # of it, kept for unloading after Triton stops waiting for requests in flight
# Local runs bind loopback only: nothing off the host reaches an unauthenticated
# inference port by accident. The image (Dockerfile) binds all interfaces.
SERVE_HOST = "127.0.0.1"
# Triton's restricted APIs (serve): these need the key header on HTTP and gRPC.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
API_KEY_HEADER = "triton-guard-key"  # the HTTP header; lowercase: gRPC metadata keys are
# Triton 2.51 expects the gRPC metadata key with this prefix.
GRPC_API_KEY_HEADER = "triton-grpc-protocol-" + API_KEY_HEADER
API_KEY_ENV = "TRITON_GUARD_API_KEY"  # the key itself (e.g. from a Kubernetes Secret)
API_KEY_FILE_ENV = "TRITON_GUARD_API_KEY_FILE"  # or a file holding it
# Where a running `serve` records its ports, repository and key file for the local tools of the
# same user (src/triton_guard/server/local_record.py); default $XDG_RUNTIME_DIR/triton-guard,
# else <tmp>/triton-guard-<uid>.
RUN_DIR_ENV = "TRITON_GUARD_RUN_DIR"
SHM_PREFIX = "triton_guard_"  # + serve pid + gRPC port + "_": the Python backend's /dev/shm names

# --- Guard (values from the incident write-up) ----------------------------
TIMEOUT_MS = 10_000  # hard deadline on every upstream call
FAILURE_THRESHOLD = 5  # consecutive failures that open the breaker
RECOVERY_MS = 30_000  # OPEN -> HALF_OPEN after this long
HALF_OPEN_MAX_CALLS = 1  # trial calls admitted in HALF_OPEN
MAX_INFLIGHT = 8  # bulkhead: upstream calls at once, per guard instance
# Active recovery: while OPEN, one probe at a time (one row of the last good
# call's inputs) at most this often; a good answer ends OPEN early (HALF_OPEN).
# 0 turns it off: then only RECOVERY_MS ends OPEN.
PROBE_INTERVAL_MS = 1_000
# The probe's input is refreshed from a successful call at most this often.
PROBE_SAMPLE_REFRESH_S = 10.0
# A guard instance that started an execute within this long of ending the
# previous one was busy all along: a request without an arrival stamp
# arrived no earlier than that previous execute began (guard/core.py).
QUEUE_IDLE_GAP_S = 0.1
# Instances of a guard that `triton-guard guard` writes: one blocked on a hung
# upstream call leaves the other free to answer (and fail fast once OPEN).
GUARD_INSTANCE_COUNT = 2
# Failure-rate and slow-call trips over a count-based sliding window
# (resilience4j's model): they catch a flapping upstream that never produces
# `failure_threshold` failures in a row.
WINDOW_SIZE = 20  # last N completed calls
MINIMUM_CALLS = 10  # no rate trip before this many calls in the window
FAILURE_RATE_THRESHOLD = 0.5  # fraction of failed calls that opens
SLOW_CALL_MS = 5_000  # a call slower than this counts as slow
SLOW_CALL_RATE_THRESHOLD = 0.8  # fraction of slow calls that opens
# Optional guard input: CLOCK_MONOTONIC ns at which the request entered the
# pipeline (stamped by its first step). The guard's deadline counts from it,
# so time spent queued in front of the guard is part of timeout_ms.
ARRIVAL_INPUT = "GUARD_ARRIVED_NS"
# Triton 24.10 never restarts a dead Python stub: the guard that sees one
# reloads the upstream (explicit model control), at most once per recovery period.
HEAL_DEAD_UPSTREAM = True
# Healing goes through Triton's HTTP repository API, from a thread beside the request path.
HEAL_HTTP_TIMEOUT_S = 60.0  # one reload request; a model load can take this long
# A guard whose upstream's config is completed at load (no config.pbtxt, or one
# without tensors) checks its tensors against the server's config of it. At
# start-up Triton answers HTTP only once its first loads are done, so the check
# waits for the upstream beside the load, on a thread, this long at most.
GUARD_INTERFACE_WAIT_S = 120.0
GUARD_INTERFACE_POLL_S = 0.5
GUARD_INTERFACE_HTTP_TIMEOUT_S = 2.0  # one config request from the guard's stub
# Set to "1", the guard's hand-off to its bulkhead worker pins caller and worker to one CPU for
# the two wakes (a cheaper no-op trip on an idle VM; no gain measured serving: guard/workers.py).
HANDOFF_PINNING_ENV = "TRITON_GUARD_HANDOFF_PINNING"
# Non-finite values (NaN, inf) in an upstream's floating-point outputs fail the call.
CHECK_FINITE = True

# --- Client-side guard and Ray Serve (src/triton_guard/client/) ---------------------
# The client guard takes the in-server guard's parameters (GuardConfig, above).
# gRPC's reconnect backoff grows to 120 s by default: a restarted server would
# stay unreachable to the channel long after it is back.
CLIENT_MAX_RECONNECT_BACKOFF_MS = 1_000
RAY_HEALTH_CHECK_PERIOD_S = 10.0  # Ray Serve's own default: how often check_health runs
RAY_HEALTH_CHECK_TIMEOUT_S = 30.0  # Ray Serve's own default; the canary answers within its deadline (2 s)

# --- An operator's override (`triton-guard breaker MODEL open|close|auto`) ---------
# The model `serve` adds beside the repository (unless it has its own): it checks
# the API key and overrides a breaker in the server's state directory.
CONTROL_MODEL = "guard_control"
BREAKER_COMMAND_TIMEOUT_S = 10.0  # triton-guard breaker: limit on its one gRPC call

# --- Shared breaker state (src/triton_guard/guard/shared_state.py) ----------------
# One breaker state per server, shared by every guard stub process.
STATE_DIR_ENV = "TRITON_GUARD_STATE_DIR"  # overrides the state directory
STATE_DIR_BASE = "/dev/shm"  # tmpfs: state lives in RAM and dies with the host
STATE_DIR_PREFIX = "triton-guard-"  # + tritonserver pid: one directory per server
WINDOW_SIZE_MAX = 1024  # ring capacity in the state file (1 byte per call): bounds window_size
# The request path reads a breaker's state without a lock; this often it takes
# the lock instead, to follow a deleted or replaced file and to check (and
# repair) the whole record. A damaged file is found within this long.
STATE_CHECK_INTERVAL_S = 0.1

# --- Canary ---------------------------------------------------------------
CANARY_MODEL = "canary"
CANARY_MODELS = ()  # liveness: empty means every model the server has loaded
# Goldens (canary/goldens.py): a float output passes within this of its golden
# (times max(1, |golden|)): far above float32 rounding differences between
# devices (~1e-7 on probabilities), far below what a changed weight does.
GOLDEN_TOLERANCE = 1e-4
CANARY_DEADLINE_MS = 2_000  # one canary run, all checks; a stuck check fails, never hangs
CANARY_INTERVAL_MS = 10_000  # full run on its own, so metrics stay fresh between probes
CANARY_SAMPLE_INTERVAL_MS = 1_000  # memory and stall sampling for the trend
HEADROOM_FLOOR_FRACTION = 0.10  # free memory below 10% of the total is not ready
HEADROOM_FLOOR_MB = 0.0  # an absolute floor too; the stricter of the two applies
TREND_WINDOW_S = 600.0  # memory history kept for the leak trend: how long "growing for" can say
TREND_MIN_SAMPLES = 10  # fewer samples: no trend verdict yet
# Memory must have grown steadily for this long to count as a leak (and no verdict before the
# samples span it); with LEAK_EVIDENCE_RATIO below, 60 s blamed no more warm-ups than 120 s and
# named fast leaks sooner (scripts/eval_leak_blame.py measures both; docs/memory.md).
TREND_MIN_SPAN_S = 60.0
TREND_HORIZON_S = 900.0  # not ready when the floor is projected within 15 minutes
# Per-instance memory (canary/instances.py): the server's stubs are listed again this often
# (between two listings a sample reads one small /proc file per stub), or when one is gone.
INSTANCE_RESCAN_S = 10.0
# An in-process guard on a GPU instance reports torch's allocator every CANARY_SAMPLE_INTERVAL_MS
# (canary/allocator.py); a report older than this is from a reporter that stopped.
ALLOCATOR_STALE_S = 10.0
# Opt-in (canary parameter leak_reload): reload the model whose instance leaks, at most once per
# cooldown per model; off by default: a reload restarts every instance of the model.
LEAK_RELOAD = False
LEAK_RELOAD_COOLDOWN_S = 1800.0
# Leak blame (canary/growth.py, docs/memory.md): growth counts as a leak when it is steady over the
# last trend_min_span_s, cut into this many segments, each segment's median above the one before
# by more than the noise (this many standard errors) and this minimum, and the newest rise at least
# this fraction of the oldest (a warm-up or a filling cache decelerates, a leak does not).
LEAK_SEGMENTS = 4
LEAK_NOISE_Z = 3.0
LEAK_MIN_RISE_MB = 1.0
LEAK_FLATTENING_RATIO = 0.5
# ...and only once it has grown steadily for at least this share of the time it leaves to the floor
# (it has already eaten half of what is left), or through most of the history kept (trend_window_s).
LEAK_EVIDENCE_RATIO = 0.5
STALL_S = 10.0  # requests pending and nothing completed for this long: stalled
HALF_OPEN_NOT_READY = False  # an OPEN breaker always fails readiness; HALF_OPEN only if set
STRICT_PINS = False  # a runtime version mismatch fails readiness only in strict mode
PROBE_TIMEOUT_S = 5.0  # triton-guard probe: total time, start-up excluded

# Set by `triton-guard serve` for the canary inside the server.
HTTP_URL_ENV = "TRITON_GUARD_HTTP_URL"
METRICS_URL_ENV = "TRITON_GUARD_METRICS_URL"
# The repositories whose models' goldens the canary checks (os.pathsep-separated);
# without it, the repository the canary model itself lives in.
MODEL_REPOSITORIES_ENV = "TRITON_GUARD_MODEL_REPOSITORIES"
CANARY_STOP_JOIN_S = 5.0  # finalize waits this long for the sampler and a run in progress
# Overload is not a fault (canary/overload.py): a golden refused or delayed for load
# counts as "overloaded", not failed, when the model answered requests over at least
# OVERLOAD_EVIDENCE_S (the canary looks twice, that far apart, within its deadline)
# and its goldens were answered right within OVERLOAD_GRACE_S.
OVERLOAD_EVIDENCE_S = 1.0  # many executions of a batched CPU or GPU model; < CANARY_DEADLINE_MS
OVERLOAD_GRACE_S = 120.0  # twelve of the canary's own runs (CANARY_INTERVAL_MS) without one right answer
OVERLOAD_WINDOW_S = 10.0  # crowding: requests inside a model on average over this window > one round of its instances
OVERLOAD_CAPACITY_TTL_S = 60.0  # a model's batch size and instances (its config) are read again this often

# --- Fault injection (`serve --chaos`, `triton-guard chaos`; chaos/) -------
# Set only by `serve --chaos`: without it no model builds a chaos hook.
CHAOS_DIR_ENV = "TRITON_GUARD_CHAOS_DIR"
CHAOS_MODEL = "chaos"  # the control model; served only in chaos mode
CHAOS_TARGET_MODEL = "classifier"  # the torch model `pipeline` runs (guarded in-process): the incident's model
CHAOS_SLOW_MS = 500  # slow, yet far inside the guard's 10 s timeout
CHAOS_LEAK_MB_PER_S = 10.0  # a trend a memory check can see, not an instant OOM
CHAOS_LEAK_CAP_MB = 512.0  # bounded: a forgotten leak cannot take the host down
CHAOS_DRIFT_SCALE = 0.5  # noise std / weight std: ~7% of held-out labels change
CHAOS_DRIFT_SEED = 0  # same seed, same perturbed weights: reproducible answers
CHAOS_HANG_POLL_S = 0.02  # a hung execute notices `clear` within this long
CHAOS_WATCH_S = 0.1  # leak growth step and clear detection (1 MB chunks at 10 MB/s)
CHAOS_TIMEOUT_S = 10.0  # triton-guard chaos: limit on the gRPC call to the chaos model

# --- Output distribution monitor (src/triton_guard/drift/monitor.py) --------------
DRIFT_WINDOW = 200  # answers per sliding window
DRIFT_MIN_FILL = 1.0  # no alarm until the window is full: small samples are noisy
DRIFT_P_ALARM = 1e-4  # chi-squared / KS p-value that alarms (3 tests, overlapping windows)
DRIFT_PSI_ALARM = 0.25  # PSI above this is the conventional "major shift"
DRIFT_EVALUATE_S = 1.0  # scores recomputed beside the request path this often
DRIFT_STALE_S = 30.0  # a monitor that has not rewritten its scores for this long is dead: its verdict stops counting
DRIFT_REFERENCE_MIN_ROWS = 100  # `drift record` refuses a smaller reference: its own sampling error would alarm
DRIFT_REFERENCE_DIR = "drift"  # references live in DIR/MODEL/drift/OUTPUT.json, beside the model they describe
# Request parameter that keeps a request's answers out of every drift window:
# the canary's golden requests carry it (through ensembles too); synthetic
# client traffic may set it. Not "triton_*": Triton reserves that prefix.
PROBE_PARAMETER = "guard_probe"
DRIFT_FAILS_READINESS = False  # a drift alarm is reported by the canary; fails readiness only if set
