"""triton_guard.config_edit: edits on a config.pbtxt's text that keep its comments, checked by parsing."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from triton_guard.config_edit import appended, edited_text, field_lines, rename_references, set_scalar, tokens
from triton_guard.model_config import config_text

CONFIG = """# The model (a comment that says name: "m" must stay as it is)
name: "m"  # trailing comment
backend: "python"
max_batch_size: 8
input [ { name: "m", data_type: TYPE_FP32, dims: [ 4 ] } ]  # an input named like the model
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]
parameters { key: "note", value: { string_value: "# not a comment, name: \\"m\\"" } }
"""


def parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_set_scalar_changes_the_top_level_field_only():
    edited = set_scalar(CONFIG, "name", "m_unguarded")
    assert parse(edited).name == "m_unguarded"
    assert parse(edited).input[0].name == "m"  # the nested field of the same name is untouched
    # Every other byte is as it was: the comments, the string holding '#', the layout.
    assert edited == CONFIG.replace('name: "m"  # trailing', 'name: "m_unguarded"  # trailing')


def test_set_scalar_of_a_number():
    assert parse(set_scalar(CONFIG, "max_batch_size", 0)).max_batch_size == 0


def test_set_scalar_says_when_the_text_does_not_set_the_field():
    assert set_scalar(CONFIG, "platform", "onnxruntime_onnx") is None
    assert set_scalar("# only a comment\n", "name", "x") is None


def test_rename_references_renames_every_equal_value_at_any_depth():
    ensemble = """platform: "ensemble"
ensemble_scheduling { step [
  { model_name: "a" model_version: -1 },  # first
  { model_name: "ab" model_version: -1 },
  { model_name: "a" model_version: -1 } ] }
"""
    steps = parse(rename_references(ensemble, "model_name", "a", "a_guard")).ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["a_guard", "ab", "a_guard"]


def test_appended_lines_parse_after_the_text():
    only = model_config_pb2.ModelConfig()
    only.parameters["timeout_ms"].string_value = "500"
    text = appended(CONFIG.rstrip("\n"), field_lines(only, "parameters"))
    config = parse(text)
    assert config.parameters["timeout_ms"].string_value == "500" and config.parameters["note"].string_value
    assert text.startswith(CONFIG.rstrip("\n") + "\n")


def test_field_lines_are_the_lines_of_that_field_alone():
    config = parse(CONFIG)
    assert field_lines(config, "output") == ['output { name: "Y" data_type: TYPE_FP32 dims: 4 }']
    assert field_lines(config, "max_batch_size") == ["max_batch_size: 8"]
    assert field_lines(config, "dynamic_batching") == []


def test_edited_text_keeps_the_edit_when_it_parses_to_the_wanted_config():
    wanted = parse(CONFIG)
    wanted.backend = "guard"
    text, kept = edited_text(CONFIG, wanted, lambda t: set_scalar(t, "backend", "guard"))
    assert kept and "# trailing comment" in text and parse(text) == wanted


def test_edited_text_writes_the_whole_config_when_the_edit_does_not_give_it():
    wanted = parse(CONFIG)
    wanted.backend = "guard"
    wanted.max_batch_size = 4  # the edit below forgets this
    text, kept = edited_text(CONFIG, wanted, lambda t: set_scalar(t, "backend", "guard"), header="# header\n")
    assert not kept and text == "# header\n" + config_text(wanted)


def test_edited_text_falls_back_when_the_scanner_cannot_read_the_text():
    odd = 'name: "m"\nbackend: "python"\noptimization { priority: PRIORITY_MAX } @\n'
    wanted = model_config_pb2.ModelConfig(name="x", backend="python")
    text, kept = edited_text(odd, wanted, lambda t: set_scalar(t, "name", "x"))
    assert not kept and parse(text) == wanted


def test_tokens_skip_comments_and_track_depth():
    found = [(t.text, t.depth) for t in tokens('a { b: "#x" } # c: 1\nd: 2')]
    assert found == [("a", 0), ("{", 0), ("b", 1), (":", 1), ('"#x"', 1), ("}", 0), ("d", 0), (":", 0), ("2", 0)]
