"""The dynamic batching triton-guard writes and recommends on Triton 2.51: no queue policy, no priority levels.

Why (read in Triton core r24.10: PriorityQueue, DynamicBatchScheduler::BatcherThread,
RateLimiter::PayloadSlotAvailable; measured in docs/overload.md with scripts/bench_queues.py):

* A dynamic batcher prefetches (prepares the next batch while an instance
  runs) only when its `default_queue_policy` sets nothing (no
  `max_queue_size`, no queue timeout, no `allow_timeout_override`) and it has
  no `priority_levels`. Any of them switches it to forming a batch only
  while an instance is waiting for one.
* In that mode the wake-up that says an instance is free comes from the
  finished batch's callback, which can run before the instance counts
  itself as waiting; a missed wake-up is repaired only by the next request
  that enqueues successfully, or by the batcher's 500 ms timer.
* A full queue refuses every request without waking the batcher. So a
  bounded queue sits idle, full, for up to 500 ms at a time precisely under
  overload (server#8870; fixed by core#509 in Triton 2.72): on the demo at
  256 clients, 256 answers/s with the shipped bound against 3,860 without,
  p99 1,064 ms against 160 ms.

So a model's queue is left unbounded inside Triton and waiting is bounded
where it costs nothing: the guard answers every request by timeout_ms after
it entered the pipeline (the first step's arrival stamp), without calling
the model once that deadline has passed. Plain Python on tritonclient's
model_config_pb2.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2

# dynamic_batching fields that switch Triton 2.51's batcher out of prefetching.
_POLICY_LIMITS = ("max_queue_size", "default_timeout_microseconds", "allow_timeout_override")


def recommended_dynamic_batching(
    current: model_config_pb2.ModelDynamicBatching | None = None,
) -> model_config_pb2.ModelDynamicBatching:
    """`current` (preferred sizes, queue delay... kept) without queue policies and priority levels.

    With no `current`: `dynamic_batching {}`, Triton's defaults.
    """
    batching = model_config_pb2.ModelDynamicBatching()
    if current is not None:
        batching.CopyFrom(current)
    for field in ("default_queue_policy", "priority_queue_policy", "priority_levels", "default_priority_level"):
        batching.ClearField(field)
    return batching


def stall_risks(config: model_config_pb2.ModelConfig) -> list[str]:
    """What in a model's dynamic batching makes Triton 2.51's batcher stall under load; empty when nothing does."""
    if not config.HasField("dynamic_batching"):
        return []
    batching = config.dynamic_batching
    found = []
    policies = [("default_queue_policy", batching.default_queue_policy)] if batching.HasField(
        "default_queue_policy") else []
    policies += [(f"priority_queue_policy[{level}]", p) for level, p in sorted(batching.priority_queue_policy.items())]
    for where, policy in policies:
        set_limits = [f"{name}: {getattr(policy, name)}".lower() for name in _POLICY_LIMITS if getattr(policy, name)]
        if set_limits:
            found.append(f"{where} sets {', '.join(set_limits)}")
    if batching.priority_levels:
        found.append(f"priority_levels: {batching.priority_levels}")
    if not found:
        return []
    return [
        f"model '{config.name}': dynamic_batching {'; '.join(found)}: on Triton 2.51 this stops the batcher "
        "prefetching, and a full or waiting queue can then sit idle up to 500 ms (server#8870; docs/overload.md)"
    ]
