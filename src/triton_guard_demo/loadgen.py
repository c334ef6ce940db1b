"""A closed-loop gRPC load generator for the digits pipeline: many clients, little client CPU.

`LoadRun` (or `run_load`) starts a few worker processes; each runs asyncio with `clients /
processes` coroutines over raw `grpc.aio` calls whose request bytes are
serialised once (tritonclient's ModelInferRequest), so a call costs the
client one send and one parse, not tritonclient's per-call tensor building.
Each client sends one held-out digit, waits for the answer (or the error),
and sends the next at once: no think time, no backoff, the worst case for
the server.

Every second each worker reports what ended in that second: answers (and
how many were wrong labels), errors by `reason` (classified from the
message, below) and the latencies of the answers; the parent merges them
into `Second` rows. Worker CPU (process time) comes back at the end, so a
run can say how much of the machine the client took.

Used by scripts/overload.py, scripts/bench_queues.py and tests/integration/test_overload.py;
`process_group_cpu_s` gives the server's share of the CPU beside it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue as queue_module
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
REPORT_EVERY_S = 0.25  # how often a worker hands its finished seconds to the parent
CLIENTS_PER_CHANNEL = 64  # HTTP/2 streams per connection: a few connections, as perf_analyzer's
WORKER_START_TIMEOUT_S = 60.0

# Why a request was not answered, from Triton's or the guard's message (first match wins).
# The guard's own words: triton_guard/guard/core.py and the admission rejections.
REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("breaker", ("Service temporarily unavailable",)),
    ("queue_full", ("Exceeds maximum queue size",)),
    ("queue_timeout", ("Request timeout expired",)),
    ("bulkhead", ("calls in flight (max_inflight",)),
    ("deadline", ("did not answer within", "passed after")),
    ("stub_dead", ("is not healthy",)),
)
CLIENT_TIMEOUT = "client_timeout"  # the client gave up (gRPC DEADLINE_EXCEEDED)
UNREACHABLE = "unreachable"  # gRPC UNAVAILABLE without a server message: no connection
OTHER = "other"


def classify(code_name: str, message: str) -> str:
    """The reason of one failed call: a REASONS key, CLIENT_TIMEOUT, UNREACHABLE or OTHER."""
    for reason, markers in REASONS:
        if any(marker in message for marker in markers):
            return reason
    if code_name == "DEADLINE_EXCEEDED":
        return CLIENT_TIMEOUT
    if code_name == "UNAVAILABLE" and ("failed to connect" in message.lower() or "connection" in message.lower()):
        return UNREACHABLE
    return OTHER


@dataclass
class Second:
    """What ended in one second of a run (seconds since the run's t0)."""

    second: int
    answers: int = 0
    wrong: int = 0  # answers whose label differs from the digit's true label
    errors: Counter = field(default_factory=Counter)  # reason -> count
    latencies_ms: list = field(default_factory=list)  # of the answers
    examples: dict = field(default_factory=dict)  # reason -> one message

    def merge(self, other: "Second") -> None:
        self.answers += other.answers
        self.wrong += other.wrong
        self.errors.update(other.errors)
        self.latencies_ms.extend(other.latencies_ms)
        for reason, message in other.examples.items():
            self.examples.setdefault(reason, message)

    def p99_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else None


@dataclass(frozen=True)
class LoadSpec:
    url: str  # host:port of Triton's gRPC endpoint
    model: str = "pipeline"
    clients: int = 256
    processes: int = 2
    client_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.clients < 1 or self.processes < 1:
            raise ValueError("clients and processes must be >= 1")
        if self.client_timeout_s <= 0:
            raise ValueError("client_timeout_s must be > 0")


@dataclass
class LoadResult:
    seconds: dict[int, Second]
    client_cpu_s: float  # process time of every worker, summed
    wall_s: float

    def rows(self) -> list[Second]:
        if not self.seconds:
            return []
        last = max(self.seconds)
        return [self.seconds.get(s, Second(s)) for s in range(last + 1)]

    def totals(self, first: int = 0, last: int | None = None) -> Second:
        total = Second(-1)
        for row in self.rows():
            if row.second >= first and (last is None or row.second <= last):
                total.merge(row)
        return total


def request_bytes(model: str, images: np.ndarray) -> list[bytes]:
    """One serialised ModelInferRequest per image (IMAGE UINT8 [1, 8, 8]); every output comes back.

    (Asking an ensemble of Triton 2.51 for LABEL alone fails with "unexpected
    deadlock, at least one output is not set": PROBS feeds a later step.)"""
    from tritonclient.grpc import service_pb2

    requests = []
    for image in images:
        request = service_pb2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = "IMAGE", "UINT8"
        tensor.shape.extend([1, *image.shape])
        request.raw_input_contents.append(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        requests.append(request.SerializeToString())
    return requests


def _label(response_bytes: bytes, response_type) -> int:
    response = response_type.FromString(response_bytes)
    index = next(i for i, output in enumerate(response.outputs) if output.name == "LABEL")
    return int(np.frombuffer(response.raw_output_contents[index], dtype=np.int64)[0])


async def _client(channel, payloads, labels, offset, stride, stop_at, timeout_s, record, response_type):
    import grpc

    call = channel.unary_unary(INFER_METHOD)  # bytes in, bytes out: no per-call (de)serialiser
    index = offset
    while time.monotonic() < stop_at:
        i = index % len(payloads)
        index += stride
        started = time.monotonic()
        try:
            answer = await call(payloads[i], timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            record(started, time.monotonic(), None, classify(exc.code().name, exc.details() or ""), exc.details())
        else:
            record(started, time.monotonic(), _label(answer, response_type) == labels[i], None, None)


async def _worker_main(spec: LoadSpec, index: int, clients: int, images, labels, go, t0_value, duration_s, out):
    import grpc
    from tritonclient.grpc import service_pb2

    payloads = request_bytes(spec.model, images)
    seconds: dict[int, Second] = {}

    def record(started, ended, right, reason, message):
        second = int(ended - t0)
        row = seconds.get(second)
        if row is None:
            row = seconds[second] = Second(second)
        if reason is None:
            row.answers += 1
            row.wrong += 0 if right else 1
            row.latencies_ms.append((ended - started) * 1000)
        else:
            row.errors[reason] += 1
            if reason not in row.examples:
                row.examples[reason] = message

    def flush(final: bool) -> None:
        current = int(time.monotonic() - t0)
        for second in sorted(seconds):
            if final or second < current:
                out.put(("second", seconds.pop(second)))

    options = [("grpc.max_receive_message_length", 16 << 20)]
    channels = [grpc.aio.insecure_channel(spec.url, options=options)
                for _ in range(max(1, -(-clients // CLIENTS_PER_CHANNEL)))]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), WORKER_START_TIMEOUT_S)
    out.put(("ready", index))
    while not go.is_set():  # the parent sets t0 once every worker is ready
        await asyncio.sleep(0.01)
    t0 = t0_value.value
    await asyncio.sleep(max(0.0, t0 - time.monotonic()))
    stop_at = t0 + duration_s
    tasks = [
        asyncio.create_task(_client(channels[c % len(channels)], payloads, labels, index * clients + c,
                                    spec.processes * clients, stop_at, spec.client_timeout_s, record,
                                    service_pb2.ModelInferResponse))
        for c in range(clients)
    ]
    while not all(task.done() for task in tasks):
        await asyncio.sleep(REPORT_EVERY_S)
        flush(final=False)
    for task in tasks:
        task.result()  # a bug in a client surfaces here, not as missing rows
    flush(final=True)
    for channel in channels:
        await channel.close()


def _worker(spec, index, clients, images, labels, go, t0_value, duration_s, out) -> None:
    try:
        asyncio.run(_worker_main(spec, index, clients, images, labels, go, t0_value, duration_s, out))
    except BaseException as exc:  # the parent must hear of it, not wait for rows that never come
        out.put(("error", f"load worker {index}: {type(exc).__name__}: {exc}"))
    finally:
        out.put(("cpu", time.process_time()))


class LoadRun:
    """One run: `start()` spawns the workers and returns t0 once all are connected; `collect()` waits for the end.

    The caller's main module must be import-safe (`if __name__ == "__main__":`):
    workers are spawned, not forked (the parent may hold gRPC channels and threads).
    """

    def __init__(self, spec: LoadSpec, images: np.ndarray, labels: np.ndarray, duration_s: float,
                 on_second: Callable[[Second], None] | None = None) -> None:
        self.spec, self.duration_s, self.on_second = spec, duration_s, on_second
        context = multiprocessing.get_context("spawn")
        self._out = context.Queue()
        self._go = context.Event()
        self._t0 = context.Value("d", 0.0)
        self._workers = [
            context.Process(target=_worker, daemon=True,
                            args=(spec, i, n, images, labels, self._go, self._t0, duration_s, self._out))
            for i, n in enumerate(_split(spec.clients, spec.processes)) if n
        ]
        self.t0: float | None = None
        self._seconds: dict[int, Second] = {}
        self._cpu, self._errors, self._finished = 0.0, [], 0

    def start(self, lead_s: float = 0.2) -> float:
        for worker in self._workers:
            worker.start()
        ready = 0
        until = time.monotonic() + WORKER_START_TIMEOUT_S
        while ready < len(self._workers):
            kind, value = self._get(until)
            if kind == "ready":
                ready += 1
            else:
                self._take(kind, value)
                if kind in ("error", "cpu"):
                    self._stop()
                    raise RuntimeError("; ".join(self._errors) or "a load worker ended before it started")
        self.t0 = self._t0.value = time.monotonic() + lead_s
        self._go.set()
        return self.t0

    def collect(self) -> LoadResult:
        until = self.t0 + self.duration_s + self.spec.client_timeout_s + WORKER_START_TIMEOUT_S
        while self._finished < len(self._workers):
            try:
                self._take(*self._get(until))
            except queue_module.Empty:
                break
        self._stop()
        if self._errors or self._finished < len(self._workers):
            raise RuntimeError("; ".join(self._errors)
                               or f"only {self._finished} of {len(self._workers)} load workers finished")
        return LoadResult(self._seconds, self._cpu, time.monotonic() - self.t0)

    def _get(self, until: float):
        return self._out.get(timeout=max(0.1, until - time.monotonic()))

    def _take(self, kind, value) -> None:
        if kind == "second":
            self._seconds.setdefault(value.second, Second(value.second)).merge(value)
            if self.on_second is not None:
                self.on_second(value)
        elif kind == "cpu":
            self._cpu += value
            self._finished += 1
        elif kind == "error":
            self._errors.append(value)

    def _stop(self) -> None:
        for worker in self._workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()


def run_load(spec: LoadSpec, images: np.ndarray, labels: np.ndarray, duration_s: float) -> LoadResult:
    """Start, run for duration_s from t0, collect."""
    run = LoadRun(spec, images, labels, duration_s)
    run.start()
    return run.collect()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def heldout_images() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits (uint8 [N, 8, 8]) and their labels: what the load sends."""
    from triton_guard_demo.digits import heldout_split, load_digits_uint8

    _, _, images, labels = heldout_split(*load_digits_uint8())
    return images, labels


def process_group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in a group: a tritonserver and its stubs."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total

