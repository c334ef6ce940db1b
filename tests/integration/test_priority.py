"""Triton 2.51 passes a request's priority through an ensemble to its steps (tests/integration/repos/priority).

What docs/overload.md builds on: a request sent with the highest priority
overtakes requests already queued in every step of an ensemble whose steps
declare priority levels. Requests queue at the default (lower) level in
`slow` (50 ms each, one at a time); then one is sent at priority 1.
"""

from __future__ import annotations

import threading
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import wait_until
from tests.integration.conftest import REPOS, running_server
from triton_guard import promtext

pytestmark = pytest.mark.integration

REPOSITORY = REPOS / "priority"
QUEUED = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(REPOSITORY, tmp_path_factory.mktemp("priority") / "tritonserver.log") as srv:
        yield srv


def test_a_priority_1_request_overtakes_the_queue_in_every_step_of_an_ensemble(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    finished: list[str] = []
    lock, all_done = threading.Lock(), threading.Event()

    def send(tag: str, priority: int) -> None:
        tensor = grpcclient.InferInput("X", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 1), np.float32))

        def done(result, error, tag=tag):
            with lock:
                finished.append(tag if error is None else f"{tag}: {error}")
                if len(finished) == QUEUED + 1:
                    all_done.set()

        client.async_infer("chain", [tensor], done, priority=priority)

    try:
        for i in range(QUEUED):
            send(f"default {i}", 0)

        def queued():
            samples = promtext.fetch(server.metrics_url, 2.0)
            return promtext.by_label(samples, "nv_inference_pending_request_count", "model").get("slow", 0) >= QUEUED / 2

        wait_until(queued, 10, "requests queued in 'slow'")
        send("priority 1", 1)
        assert all_done.wait(60), finished
    finally:
        client.close()
    assert not [f for f in finished if ":" in f], finished
    # Sent last, answered before most of the queue (at the default level it comes back last).
    assert finished.index("priority 1") < QUEUED // 2, finished
