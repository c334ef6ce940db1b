"""triton_guard.queue_policy: the batching guard writes on Triton 2.51, and what it warns about."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triton_guard.queue_policy import recommended_dynamic_batching, stall_risks


def _config(batching: str) -> mc.ModelConfig:
    return text_format.Parse(f'name: "m" max_batch_size: 8 {batching}', mc.ModelConfig())


SHIPPED_BEFORE = """dynamic_batching {
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 100
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 10000000
                         allow_timeout_override: true max_queue_size: 128 }
  priority_levels: 2
  default_priority_level: 2
  priority_queue_policy { key: 1 value: { max_queue_size: 4 } }
}"""


def test_the_recommendation_keeps_batch_shaping_and_drops_every_queue_limit_and_priority():
    batching = recommended_dynamic_batching(_config(SHIPPED_BEFORE).dynamic_batching)
    assert list(batching.preferred_batch_size) == [4, 8] and batching.max_queue_delay_microseconds == 100
    assert not batching.HasField("default_queue_policy") and not batching.priority_queue_policy
    assert batching.priority_levels == 0 and batching.default_priority_level == 0
    assert stall_risks(mc.ModelConfig(name="m", dynamic_batching=batching)) == []


def test_without_a_current_batching_it_is_tritons_default():
    assert recommended_dynamic_batching() == mc.ModelDynamicBatching()
    assert text_format.MessageToString(recommended_dynamic_batching()) == ""


def test_every_setting_that_stops_prefetching_is_named():
    (risk,) = stall_risks(_config(SHIPPED_BEFORE))
    assert risk.startswith("model 'm': dynamic_batching default_queue_policy sets max_queue_size: 128, "
                           "default_timeout_microseconds: 10000000, allow_timeout_override: true; "
                           "priority_queue_policy[1] sets max_queue_size: 4; priority_levels: 2: on Triton 2.51")
    assert "server#8870" in risk


def test_a_bound_alone_or_priority_alone_is_a_risk_and_plain_batching_is_not():
    assert stall_risks(_config("dynamic_batching { default_queue_policy { max_queue_size: 16 } }"))
    assert stall_risks(_config("dynamic_batching { priority_levels: 2 default_priority_level: 2 }"))
    assert stall_risks(_config("dynamic_batching { default_queue_policy { timeout_action: REJECT } }")) == []
    assert stall_risks(_config("dynamic_batching { max_queue_delay_microseconds: 500 }")) == []
    assert stall_risks(_config("")) == []


def test_guard_writes_the_recommendation_and_says_what_it_dropped(tmp_path):
    from triton_guard.guard_writer import write_in_process
    from triton_guard.guard_writer.common import GUARD_MODEL, guard_config
    from triton_guard.model_config import read_config

    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text("class TritonPythonModel:\n    pass\n")
    (model / "config.pbtxt").write_text(
        'name: "m"\nbackend: "python"\nmax_batch_size: 8\n'
        'input [{ name: "X", data_type: TYPE_FP32, dims: [4] }]\noutput [{ name: "Y", data_type: TYPE_FP32, dims: [4] }]\n'
        "dynamic_batching { preferred_batch_size: [8] default_queue_policy { max_queue_size: 16 } }\n")
    written = write_in_process(tmp_path, "m", {})
    config = read_config(model / "config.pbtxt")
    assert config.backend == "guard" and list(config.dynamic_batching.preferred_batch_size) == [8]
    assert not config.dynamic_batching.HasField("default_queue_policy")
    assert any(line.startswith("dropped from its dynamic_batching: model 'm': dynamic_batching default_queue_policy "
                               "sets max_queue_size: 16") for line in written.lines()), written.lines()
    # A separate guard model gets Triton's plain dynamic batching, whatever its upstream has.
    assert guard_config("m_guard", "m", _config(SHIPPED_BEFORE), {}, GUARD_MODEL).dynamic_batching == \
        recommended_dynamic_batching()
