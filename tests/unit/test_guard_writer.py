"""`triton-guard guard` (guard_writer.py) and the load-time interface check (model_config.py), without a server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import json_format

from triton_guard import cli, defaults
from triton_guard.guard.config import ConfigError, GuardConfig, validate_parameters
from triton_guard.guard_writer import (
    GuardRefused,
    example_request,
    parse_params,
    write_guard,
    write_in_process,
)
from triton_guard.model_config import (
    CONFIG_FILE,
    ModelConfigError,
    check_guard_interface,
    config_from_json,
    interface_mismatch,
    parameters,
    read_config,
    write_config,
)
from triton_guard_demo.repository import MODEL_REPOSITORY
from tritonclient.grpc import model_config_pb2

KIND_CPU = model_config_pb2.ModelInstanceGroup.KIND_CPU

FOREIGN = Path(__file__).resolve().parents[1] / "integration" / "repos" / "foreign"


@pytest.fixture
def repo(tmp_path):
    return Path(shutil.copytree(FOREIGN, tmp_path / "models"))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its bytes (None for a directory): 'nothing written' compares two."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def as_json(config) -> str:
    """A config as Triton hands it to a backend (args["model_config"])."""
    return json_format.MessageToJson(config)


# --- --param ------------------------------------------------------------------------------------


def test_params_parse_key_value_pairs():
    assert parse_params(["timeout_ms=2000", "client_error_pattern=a=b"]) == {
        "timeout_ms": "2000",
        "client_error_pattern": "a=b",
    }


@pytest.mark.parametrize("pair", ["timeout_ms", "=5", ""])
def test_a_param_without_key_or_equals_is_refused(pair):
    with pytest.raises(GuardRefused, match="expected KEY=VALUE"):
        parse_params([pair])


def test_a_param_given_twice_is_refused():
    with pytest.raises(GuardRefused, match="timeout_ms given twice"):
        parse_params(["timeout_ms=1", "timeout_ms=2"])


# --- validate_parameters: the backend's own checks ----------------------------------------------


def test_validate_parameters_returns_the_guard_config():
    assert validate_parameters({"timeout_ms": "250", "heal_dead_upstream": "false"}) == GuardConfig(timeout_ms=250)


@pytest.mark.parametrize(
    "params, named",
    [
        ({"timeout_msec": "5"}, "timeout_msec"),
        ({"timeout_ms": "soon"}, "timeout_ms"),
        ({"failure_rate_threshold": "1.5"}, "failure_rate_threshold"),
        ({"client_error_pattern": "("}, "client_error_pattern"),
        ({"heal_dead_upstream": "yes"}, "heal_dead_upstream"),
    ],
)
def test_validate_parameters_names_the_bad_parameter(params, named):
    with pytest.raises(ConfigError, match=named):
        validate_parameters(params)


# --- the separate guard -------------------------------------------------------------------------


def test_guard_has_exactly_the_models_tensors_and_batching(repo):
    write_guard(repo, "add_sub", {"timeout_ms": "500"})
    model = read_config(repo / "add_sub" / CONFIG_FILE)
    guard = read_config(repo / "add_sub_guard" / CONFIG_FILE)
    assert guard.name == "add_sub_guard" and guard.backend == "guard"
    assert list(guard.input) == list(model.input) and list(guard.output) == list(model.output)
    assert guard.max_batch_size == model.max_batch_size == 0
    assert not guard.HasField("dynamic_batching")  # add_sub does not batch
    assert parameters(guard) == {"upstream_model": "add_sub", "timeout_ms": "500"}
    assert [(g.kind, g.count) for g in guard.instance_group] == [(KIND_CPU, defaults.GUARD_INSTANCE_COUNT)]
    assert (repo / "add_sub_guard" / "1").is_dir()


def test_guard_of_a_batching_model_batches_as_much(repo):
    write_guard(repo, "tokenize", {})
    model = read_config(repo / "tokenize" / CONFIG_FILE)
    guard = read_config(repo / "tokenize_guard" / CONFIG_FILE)
    assert guard.max_batch_size == model.max_batch_size > 0
    assert guard.HasField("dynamic_batching") and not guard.dynamic_batching.HasField("default_queue_policy")
    assert list(guard.input) == list(model.input) and list(guard.output) == list(model.output)
    assert parameters(guard) == {"upstream_model": "tokenize"}


@pytest.mark.parametrize("model", ["add_sub", "tokenize", "scale"])
def test_a_written_guard_passes_the_load_check(repo, model):
    write_guard(repo, model, {})
    guard = read_config(repo / f"{model}_guard" / CONFIG_FILE)
    assert check_guard_interface(repo / f"{model}_guard", as_json(guard), model) is None


def test_guard_drops_the_models_reshape(repo):
    path = repo / "scale" / CONFIG_FILE
    path.write_text(path.read_text().replace("dims: [4] }]\noutput", "dims: [4], reshape: { shape: [2, 2] } }]\noutput"))
    assert read_config(path).input[0].HasField("reshape")
    write_guard(repo, "scale", {})
    guard = read_config(repo / "scale_guard" / CONFIG_FILE)
    # The guard passes tensors on as clients sent them; the upstream reshapes them itself.
    assert not guard.input[0].HasField("reshape") and list(guard.input[0].dims) == [4]


def test_guard_tells_how_to_call_it_with_a_request_of_the_models_shape(repo):
    written = write_guard(repo, "add_sub", {"timeout_ms": "500"})
    text = "\n".join(written.lines())
    assert f"{repo / 'add_sub_guard' / CONFIG_FILE}" in text and "timeout_ms=500" in text
    assert "call 'add_sub_guard' instead of 'add_sub'" in text
    body = json.loads(text.split("-d '", 1)[1].split("'", 1)[0])
    assert [(i["name"], i["shape"], i["datatype"], len(i["data"])) for i in body["inputs"]] == [
        ("INPUT0", [4], "FP32", 4),
        ("INPUT1", [4], "FP32", 4),
    ]


def test_example_request_of_a_batched_bytes_model_has_a_batch_dimension(repo):
    body = example_request(read_config(repo / "tokenize" / CONFIG_FILE))
    assert body == {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["text"]}]}


# --- refusals: one line, nothing written --------------------------------------------------------


def _broken(repo: Path) -> None:
    (repo / "scale" / CONFIG_FILE).write_text('name: "scale"\nbackend: "python"\ninput [{ name: "X" data_type: TYPE_NOPE }]\n')


@pytest.mark.parametrize(
    "prepare, model, params, ensemble, reason",
    [
        (None, "no_such_model", {}, None, r"unknown model 'no_such_model': .* holds add_sub, add_then_scale, scale, tokenize"),
        (_broken, "scale", {}, None, r"scale/config.pbtxt: not a valid model config"),
        (lambda r: (r / "add_sub_guard").mkdir(), "add_sub", {}, None, r"add_sub_guard already exists"),
        (None, "add_sub", {"timeout_msec": "5"}, None, r"unknown guard parameter\(s\) \['timeout_msec'\]"),
        (None, "add_sub", {"timeout_ms": "-1"}, None, r"timeout_ms='?-1'? is invalid"),
        (None, "add_sub", {"upstream_model": "scale"}, None, r"upstream_model: set by the command"),
        (None, "add_sub", {}, "no_such_ensemble", r"unknown ensemble 'no_such_ensemble'"),
        (None, "add_sub", {}, "scale", r"'scale' is not an ensemble"),
        (None, "tokenize", {}, "add_then_scale", r"no step calling 'tokenize' \(its steps call add_sub, scale\)"),
        (lambda r: (r / "scale" / CONFIG_FILE).unlink(), "scale", {}, None, r"has no config.pbtxt"),
    ],
)
def test_refusals_write_nothing(repo, prepare, model, params, ensemble, reason):
    if prepare:
        prepare(repo)
    before = snapshot(repo)
    with pytest.raises(GuardRefused, match=reason) as refused:
        write_guard(repo, model, params, ensemble=ensemble)
    assert "\n" not in str(refused.value)
    assert snapshot(repo) == before


def test_a_model_whose_tensors_are_auto_completed_needs_a_server_to_ask(repo):
    (repo / "scale" / CONFIG_FILE).write_text('name: "scale"\nbackend: "python"\n')
    before = snapshot(repo)
    with pytest.raises(GuardRefused, match="declares no tensors .*name the server that runs 'scale' \\(--url\\)"):
        write_guard(repo, "scale", {})
    assert snapshot(repo) == before


@pytest.mark.parametrize(
    "extra, reason",
    [("sequence_batching {}\n", "stateful"), ("model_transaction_policy { decoupled: true }\n", "decoupled")],
)
def test_models_a_guard_cannot_serve_are_refused(repo, extra, reason):
    path = repo / "scale" / CONFIG_FILE
    path.write_text(path.read_text() + extra)
    with pytest.raises(GuardRefused, match=reason):
        write_guard(repo, "scale", {})


def test_a_guard_of_a_guard_is_refused(repo):
    write_guard(repo, "add_sub", {})
    with pytest.raises(GuardRefused, match="already a guard"):
        write_guard(repo, "add_sub_guard", {})


# --- --ensemble ---------------------------------------------------------------------------------


def test_ensemble_steps_that_call_the_model_call_its_guard(repo):
    before = read_config(repo / "add_then_scale" / CONFIG_FILE)
    written = write_guard(repo, "add_sub", {}, ensemble="add_then_scale")
    after = read_config(repo / "add_then_scale" / CONFIG_FILE)
    assert [s.model_name for s in after.ensemble_scheduling.step] == ["add_sub_guard", "scale"]
    # Only the model name changed: maps, the other step and the ensemble's tensors are as they were.
    for old, new in zip(before.ensemble_scheduling.step, after.ensemble_scheduling.step):
        assert dict(old.input_map) == dict(new.input_map) and dict(old.output_map) == dict(new.output_map)
    assert list(after.input) == list(before.input) and list(after.output) == list(before.output)
    assert "clients keep calling 'add_then_scale'" in "\n".join(written.lines())


# --- --in-process -------------------------------------------------------------------------------


def test_in_process_changes_only_the_models_backend_and_parameters(repo):
    before = snapshot(repo)
    model_before = read_config(repo / "add_sub" / CONFIG_FILE)
    write_in_process(repo, "add_sub", {"timeout_ms": "500"})
    after = read_config(repo / "add_sub" / CONFIG_FILE)
    assert after.backend == "guard" and parameters(after) == {"timeout_ms": "500"}  # no upstream_model
    after.backend, model_before.backend = "", ""
    after.ClearField("parameters")
    assert after == model_before  # nothing else in the config changed
    changed = {k for k, v in snapshot(repo).items() if before.get(k, b"missing") != v}
    # model.py kept, no new model; what unguard needs is kept in a folder Triton takes for no version
    assert {k for k in changed if not k.startswith("add_sub/triton-guard")} == {f"add_sub/{CONFIG_FILE}"}
    assert (repo / "add_sub" / "1" / "model.py").read_bytes() == before["add_sub/1/model.py"]


@pytest.mark.parametrize(
    "model, prepare, reason",
    [
        ("add_then_scale", None, "is an ensemble"),
        ("scale", lambda r: _replace(r / "scale" / CONFIG_FILE, 'backend: "python"', 'backend: "onnxruntime"'),
         'backend "onnxruntime": --in-process guards only Python models'),
        ("scale", lambda r: _replace(r / "scale" / CONFIG_FILE, 'backend: "python"', 'platform: "tensorrt_plan"'),
         'platform "tensorrt_plan": --in-process guards only Python models'),
        ("scale", lambda r: write_in_process(r, "scale", {}), "already a guard"),
    ],
)  # fmt: skip
def test_in_process_refusals_write_nothing(repo, model, prepare, reason):
    if prepare:
        prepare(repo)
    before = snapshot(repo)
    with pytest.raises(GuardRefused, match=reason):
        write_in_process(repo, model, {"timeout_ms": "500"})
    assert snapshot(repo) == before


def test_in_process_validates_parameters_the_same_way(repo):
    with pytest.raises(GuardRefused, match="unknown guard parameter"):
        write_in_process(repo, "add_sub", {"bulkhead": "3"})


def _replace(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


# --- the command --------------------------------------------------------------------------------


def test_cli_writes_and_exits_0(repo, capsys):
    code = cli.main(["guard", "add_sub", "--model-repository", str(repo), "--param", "timeout_ms=500"])
    out = capsys.readouterr()
    assert code == 0 and out.err == ""
    assert parameters(read_config(repo / "add_sub_guard" / CONFIG_FILE))["timeout_ms"] == "500"
    assert "add_sub_guard" in out.out


def test_cli_refuses_with_one_line_and_exit_1(repo, capsys):
    before = snapshot(repo)
    code = cli.main(["guard", "add_sub", "--model-repository", str(repo), "--param", "timeout_ms=never"])
    out = capsys.readouterr()
    assert code == 1 and out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith("triton-guard guard: refused: ") and "timeout_ms" in out.err
    assert snapshot(repo) == before


def test_cli_refuses_ensemble_with_in_process(repo, capsys):
    code = cli.main(["guard", "add_sub", "--model-repository", str(repo), "--in-process", "--ensemble", "add_then_scale"])
    assert code == 1 and "nothing to reroute" in capsys.readouterr().err


def test_cli_in_process(repo, capsys):
    assert cli.main(["guard", "scale", "--model-repository", str(repo), "--in-process"]) == 0
    assert read_config(repo / "scale" / CONFIG_FILE).backend == "guard"
    assert 'backend "guard" (was "python"' in capsys.readouterr().out


def test_serve_without_a_repository_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model repository: pass --model-repository DIR" in err and str(tmp_path) in err


# --- the load-time check: a guard against its upstream ------------------------------------------


def _configs(repo: Path, model: str = "add_sub"):
    write_guard(repo, model, {})
    return read_config(repo / f"{model}_guard" / CONFIG_FILE), read_config(repo / model / CONFIG_FILE)


def test_matching_interfaces_pass(repo):
    guard, upstream = _configs(repo)
    assert interface_mismatch(guard, upstream) is None


def test_a_wrong_dtype_names_the_tensor(repo):
    guard, upstream = _configs(repo)
    guard.input[1].data_type = read_config(repo / "tokenize" / CONFIG_FILE).input[0].data_type  # TYPE_STRING
    assert interface_mismatch(guard, upstream) == (
        "input 'INPUT1' is TYPE_STRING [4] (unbatched) but upstream 'add_sub' declares TYPE_FP32 [4] (unbatched)"
    )


def test_a_wrong_output_shape_names_the_tensor(repo):
    guard, upstream = _configs(repo)
    guard.output[0].dims[:] = [8]
    assert "output 'OUTPUT0' is TYPE_FP32 [8]" in interface_mismatch(guard, upstream)


def test_variable_dimensions_match_any(repo):
    guard, upstream = _configs(repo)
    guard.input[0].dims[:] = [-1]
    assert interface_mismatch(guard, upstream) is None


def test_a_guard_tensor_the_upstream_lacks_is_named(repo):
    guard, upstream = _configs(repo)
    guard.output[1].name = "OUTPUT9"
    assert interface_mismatch(guard, upstream).startswith("output 'OUTPUT9' is not an output of upstream 'add_sub'")


def test_an_undeclared_required_upstream_input_is_named(repo):
    guard, upstream = _configs(repo)
    del guard.input[1]
    assert "input 'INPUT1' of upstream 'add_sub' is required" in interface_mismatch(guard, upstream)
    upstream.input[1].optional = True
    assert interface_mismatch(guard, upstream) is None


def test_the_guards_own_arrival_input_is_not_the_upstreams(repo):
    guard, upstream = _configs(repo)
    guard.input.add(name=defaults.ARRIVAL_INPUT, data_type=guard.input[0].data_type, dims=[1], optional=True)
    assert "GUARD_ARRIVED_NS" in interface_mismatch(guard, upstream)
    assert interface_mismatch(guard, upstream, frozenset({defaults.ARRIVAL_INPUT})) is None


def test_a_batching_guard_needs_an_upstream_that_batches_as_much(repo):
    guard, upstream = _configs(repo, "tokenize")
    guard.max_batch_size = 64  # the README's old template, on a model that batches 8
    assert interface_mismatch(guard, upstream).startswith("max_batch_size 64 but upstream 'tokenize' max_batch_size 8")
    guard, upstream = _configs(repo)
    guard.max_batch_size = 64
    assert "upstream 'add_sub' does not batch" in interface_mismatch(guard, upstream)


def test_an_unbatched_guard_of_a_batching_upstream_is_a_shape_mismatch(repo):
    guard, upstream = _configs(repo, "tokenize")
    guard.max_batch_size = 0
    assert "input 'TEXT' is TYPE_STRING [1] (unbatched) but upstream 'tokenize' declares TYPE_STRING [1] (batched)" == (
        interface_mismatch(guard, upstream)
    )


def test_check_reads_the_upstream_beside_the_guard_and_raises_naming_the_tensor(repo):
    guard, _ = _configs(repo)
    guard.input[0].dims[:] = [3]
    with pytest.raises(ModelConfigError, match=r"add_sub/config.pbtxt: input 'INPUT0' is TYPE_FP32 \[3\]"):
        check_guard_interface(repo / "add_sub_guard", as_json(guard), "add_sub")


def test_check_says_why_it_could_not_check(repo):
    guard, _ = _configs(repo)
    # The upstream in another repository (or with an auto-completed config): no file beside the guard.
    assert "no " in check_guard_interface(repo / "add_sub_guard", as_json(guard), "elsewhere")
    (repo / "add_sub" / CONFIG_FILE).write_text('name: "add_sub"\nbackend: "python"\n')
    assert "declares no tensors" in check_guard_interface(repo / "add_sub_guard", as_json(guard), "add_sub")
    (repo / "add_sub" / CONFIG_FILE).write_text("not a config {")
    assert "not a valid model config" in check_guard_interface(repo / "add_sub_guard", as_json(guard), "add_sub")


def test_config_from_json_reads_int64_dims_as_numbers_or_strings(repo):
    guard, _ = _configs(repo)
    as_dict = json.loads(as_json(guard))
    for tensor in as_dict["input"]:
        tensor["dims"] = [int(d) for d in tensor["dims"]]
    as_dict["unknown_field_of_a_newer_triton"] = 1
    assert config_from_json(json.dumps(as_dict)) == guard


@pytest.mark.parametrize("guard_name", ["classifier_guard"])
def test_the_demos_guard_matches_its_upstream(guard_name):
    guard = read_config(MODEL_REPOSITORY / guard_name / CONFIG_FILE)
    upstream = parameters(guard)["upstream_model"]
    assert check_guard_interface(MODEL_REPOSITORY / guard_name, as_json(guard), upstream) is None


# --- config_text: what the command writes reads back as the same config ------------------------


REPOSITORY_CONFIGS = sorted(
    [*MODEL_REPOSITORY.glob("*/config.pbtxt"), *MODEL_REPOSITORY.glob("*/configs/*.pbtxt"),
     *(FOREIGN.parent).glob("*/*/config.pbtxt")]
)  # fmt: skip


@pytest.mark.parametrize("path", REPOSITORY_CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_config_text_parses_back_to_the_same_config(path, tmp_path):
    config = read_config(path)
    write_config(tmp_path / CONFIG_FILE, config)
    assert read_config(tmp_path / CONFIG_FILE) == config
    assert "max_batch_size: " in (tmp_path / CONFIG_FILE).read_text()  # 0 written too


def test_config_text_writes_one_line_per_tensor(repo):
    write_guard(repo, "add_sub", {})
    lines = (repo / "add_sub_guard" / CONFIG_FILE).read_text().splitlines()
    assert [line.split(" {", 1)[0] for line in lines if line.startswith(("input", "output"))] == ["input"] * 2 + ["output"] * 2
    assert "max_batch_size: 0" in lines
