"""triton_guard.chaos.protocol: faults, their validation, and the control files that hold them."""

from __future__ import annotations

import json
import math
import threading

import pytest

from triton_guard import defaults
from triton_guard.chaos.protocol import ChaosControl, Fault, FaultError, FaultKind


# --- Fault -----------------------------------------------------------------


def test_fault_defaults_come_from_defaults_and_kind_becomes_an_enum():
    fault = Fault("slow")
    assert fault.kind is FaultKind.SLOW
    assert fault.slow_ms == defaults.CHAOS_SLOW_MS
    assert fault.leak_mb_per_s == defaults.CHAOS_LEAK_MB_PER_S
    assert fault.leak_cap_mb == defaults.CHAOS_LEAK_CAP_MB
    assert fault.drift_scale == defaults.CHAOS_DRIFT_SCALE
    assert fault.seed == defaults.CHAOS_DRIFT_SEED


def test_unknown_fault_names_the_known_ones():
    with pytest.raises(FaultError, match=r"unknown fault 'melt': expected one of hang, error, slow, nan, drift, leak"):
        Fault("melt")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"slow_ms": 0}, "slow_ms must be > 0, got 0"),
        ({"slow_ms": -5}, "slow_ms must be > 0"),
        ({"slow_ms": 1.5}, "slow_ms must be an integer, got 1.5"),
        ({"slow_ms": True}, "slow_ms must be an integer, got True"),
        ({"slow_ms": "500"}, "slow_ms must be an integer, got '500'"),
        ({"leak_mb_per_s": 0.0}, "leak_mb_per_s must be > 0"),
        ({"leak_mb_per_s": math.inf}, "leak_mb_per_s must be > 0, got inf"),
        ({"leak_cap_mb": math.nan}, "leak_cap_mb must be > 0, got nan"),
        ({"drift_scale": -0.1}, "drift_scale must be > 0"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"set_at": -1.0}, "set_at must be >= 0"),
        ({"instance": -1}, "instance must be >= 0, got -1"),
        ({"instance": 1.0}, "instance must be an integer, got 1.0"),
        ({"instance": "1"}, "instance must be an integer, got '1'"),
        ({"instance": True}, "instance must be an integer, got True"),
    ],
)
def test_bad_parameters_are_refused_with_the_parameter_named(params, message):
    with pytest.raises(FaultError, match=message):
        Fault("slow", **params)


def test_fault_round_trips_through_a_dict_and_json():
    fault = Fault(FaultKind.LEAK, leak_mb_per_s=2.5, leak_cap_mb=64, set_at=1234.5)
    data = json.loads(json.dumps(fault.to_dict()))
    assert data["kind"] == "leak" and data["instance"] is None  # every instance
    assert Fault.from_dict(data) == fault
    one = Fault(FaultKind.LEAK, instance=1)
    assert Fault.from_dict(json.loads(json.dumps(one.to_dict()))) == one


def test_a_control_file_written_before_instance_existed_still_reads():
    data = {"kind": "leak", "slow_ms": 500, "leak_mb_per_s": 10.0, "leak_cap_mb": 512.0, "drift_scale": 0.5,
            "seed": 0, "set_at": 1.0}
    assert Fault.from_dict(data).instance is None


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "a fault is a JSON object, got list"),
        ({"slow_ms": 5}, "a fault needs a 'kind'"),
        ({"kind": "slow", "slowms": 5, "x": 1}, "unknown fault parameter\\(s\\): slowms, x"),
    ],
)
def test_fault_from_dict_refuses_malformed_data(data, message):
    with pytest.raises(FaultError, match=message):
        Fault.from_dict(data)


@pytest.mark.parametrize(
    "fault, words",
    [
        (Fault("slow", slow_ms=250), "+250 ms"),
        (Fault("leak", leak_mb_per_s=3, leak_cap_mb=40), "+3 MB/s held, up to 40 MB per instance)"),
        (Fault("leak", leak_mb_per_s=3, leak_cap_mb=40, instance=1), "in instance 1 only (<model>_<group>_1)"),
        (Fault("drift", drift_scale=0.2, seed=7), "scale 0.2, seed 7"),
        (Fault("hang"), "until cleared"),
    ],
)
def test_describe_says_the_kind_and_its_parameters(fault, words):
    line = fault.describe()
    assert line.startswith(fault.kind.value) and words in line


# --- ChaosControl ----------------------------------------------------------


def test_control_write_read_clear(tmp_path):
    control = ChaosControl(tmp_path / "chaos")
    assert control.read("classifier") is None
    fault = Fault("error", set_at=1.0)
    control.write("classifier", fault)
    assert control.read("classifier") == fault
    assert control.read("other") is None  # per model
    assert control.clear("classifier") == fault
    assert control.read("classifier") is None
    assert control.clear("classifier") is None


def test_control_parses_only_when_the_file_changed(tmp_path):
    control = ChaosControl(tmp_path)
    control.write("m", Fault("nan"))
    first = control.read("m")
    assert control.read("m") is first  # same bytes: the parsed fault is reused
    control.write("m", Fault("nan", set_at=2.0))
    assert control.read("m") is not first and control.read("m").set_at == 2.0


def test_a_reader_never_sees_half_a_write(tmp_path):
    writer, reader = ChaosControl(tmp_path), ChaosControl(tmp_path)
    faults = [Fault("slow", slow_ms=1, set_at=1.0), Fault("leak", leak_mb_per_s=123456.75, set_at=2.0)]
    done = threading.Event()

    def write_many():
        for i in range(1000):
            writer.write("m", faults[i % 2])
        done.set()

    thread = threading.Thread(target=write_many)
    thread.start()
    seen = []
    while not done.is_set():
        seen.append(reader.read("m"))  # raises FaultError on a torn file
    thread.join()
    assert set(seen) <= {None, *faults}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no tmp file left behind


def test_an_unreadable_control_file_is_reported_with_the_model(tmp_path):
    (tmp_path / "m.json").write_text("{garbage")
    with pytest.raises(FaultError, match="chaos control file for model 'm' is invalid"):
        ChaosControl(tmp_path).read("m")
    assert ChaosControl(tmp_path).clear("m") is None
    assert not (tmp_path / "m.json").exists()


def test_hooked_models_lists_registered_ones(tmp_path):
    control = ChaosControl(tmp_path / "absent")
    assert control.hooked_models() == []
    control.register("classifier")
    control.register("b")
    control.write("other", Fault("nan"))
    assert control.hooked_models() == ["b", "classifier"]
