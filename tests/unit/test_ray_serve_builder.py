"""triton_guard.client.ray_serve's builder arguments (`serve run ... key=value`), without starting Ray."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is a test dependency (pyproject.toml [test])")

from triton_guard.client.ray_serve import app_builder, deployment_arguments  # noqa: E402
from triton_guard.guard.config import GuardConfig  # noqa: E402

BASE = {"url": "127.0.0.1:8001", "model": "pipeline"}


def test_defaults_are_the_guards_and_rays_queue_is_bounded_by_the_bulkhead():
    kwargs, options = deployment_arguments(BASE)
    assert kwargs["guard"] == GuardConfig().to_dict()
    assert (kwargs["url"], kwargs["model"], kwargs["canary_options"]) == ("127.0.0.1:8001", "pipeline", None)
    assert options == {"max_ongoing_requests": GuardConfig().max_inflight, "max_queued_requests": GuardConfig().max_inflight}


def test_guard_deployment_and_canary_arguments_are_parsed():
    kwargs, options = deployment_arguments(
        {
            **BASE,
            "timeout_ms": "1500",
            "max_inflight": "4",
            "health_timeout_s": "0.5",
            "health_check_period_s": "2",
            "max_queued_requests": "16",
            "canary_options": '{"strict_pins": true}',
            "client_error_pattern": "too long",
            "name": "triton",
        }
    )
    assert kwargs["guard"]["timeout_ms"] == 1500 and kwargs["guard"]["max_inflight"] == 4
    assert kwargs["health_timeout_s"] == 0.5 and kwargs["canary_options"] == {"strict_pins": True}
    assert kwargs["client_error_pattern"] == "too long"
    assert options == {"max_ongoing_requests": 4, "max_queued_requests": 16, "health_check_period_s": 2.0, "name": "triton"}


@pytest.mark.parametrize(
    "args, message",
    [
        ({"model": "pipeline"}, r"^url= is required"),
        ({"url": "127.0.0.1:8001"}, r"^model= is required"),
        ({**BASE, "timeout": "1"}, r"^unknown argument\(s\): timeout$"),
        ({**BASE, "timeout_ms": "soon"}, r"^timeout_ms='soon' is invalid"),
        ({**BASE, "failure_threshold": "0"}, r"^failure_threshold=0 is invalid"),
        ({**BASE, "health_timeout_s": "-1"}, r"^health_timeout_s='-1' must be positive$"),
        ({**BASE, "health_check_period_s": "often"}, r"^health_check_period_s='often' is not a number$"),
        ({**BASE, "canary_options": "{"}, r"^canary_options='\{' is not JSON"),
        ({**BASE, "canary_options": "[1]"}, r"^canary_options must be a JSON object$"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(args, message):
    with pytest.raises(ValueError, match=message) as caught:
        deployment_arguments(args)
    assert "\n" not in str(caught.value)


def test_the_builder_binds_the_deployment_with_its_options():
    app = app_builder({**BASE, "max_inflight": "3"})
    deployment = app._bound_deployment
    assert deployment.name == "TritonGuardDeployment"
    assert deployment.max_ongoing_requests == 3
    assert deployment.init_kwargs["guard"]["max_inflight"] == 3
