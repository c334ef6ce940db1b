"""The caller's side of Triton: an asyncio guard over tritonclient.grpc.aio.

`GuardedClient` gives every call the in-server guard's breaker, hard deadline
and bulkhead, for whole-server faults the in-server guard cannot see.
triton_guard.client.ray_serve (needs `ray[serve]`) is a Ray Serve deployment
built on it whose health check asks the canary.
"""

from triton_guard.client.guard import ClientGuardError, GuardedClient, status_code

__all__ = ["ClientGuardError", "GuardedClient", "status_code"]
