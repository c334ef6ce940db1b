"""triton_guard.chaos.command: what `triton-guard chaos` sends, built, serialised and parsed."""

from __future__ import annotations

import json

import pytest

from triton_guard.chaos.command import ChaosCommand, check_instance, instance_names
from triton_guard.chaos.protocol import Fault, FaultError


# --- ChaosCommand ----------------------------------------------------------


def test_build_keeps_only_the_parameters_the_fault_uses():
    command = ChaosCommand.build("slow", "classifier", slow_ms=80, leak_cap_mb=-1, drift_scale=0)
    assert command.fault == Fault("slow", slow_ms=80)  # bad values for other kinds do not matter
    assert json.loads(command.to_json()) == {"model": "classifier", "fault": "slow", "slow_ms": 80}


def test_command_round_trips_and_the_receiver_stamps_set_at():
    sent = ChaosCommand.build("leak", "classifier", leak_mb_per_s=4.0, leak_cap_mb=16.0)
    received = ChaosCommand.from_json(sent.to_json().encode(), set_at=99.0)
    assert received.model == "classifier"
    assert received.fault == Fault("leak", leak_mb_per_s=4.0, leak_cap_mb=16.0, set_at=99.0)


def test_a_leak_aimed_at_one_instance_carries_its_index_and_other_faults_drop_it():
    sent = ChaosCommand.build("leak", "classifier", leak_mb_per_s=4.0, leak_cap_mb=16.0, instance=1)
    assert json.loads(sent.to_json())["instance"] == 1
    assert ChaosCommand.from_json(sent.to_json(), set_at=5.0).fault.instance == 1
    everywhere = ChaosCommand.build("leak", "classifier", instance=None)
    assert ChaosCommand.from_json(everywhere.to_json()).fault.instance is None
    assert ChaosCommand.build("hang", "classifier", instance=1).fault == Fault("hang")
    with pytest.raises(FaultError, match="fault slow takes no parameter"):
        ChaosCommand.from_json('{"fault": "slow", "model": "m", "instance": 1}')


def test_instance_names_follow_tritons_naming():
    served = {"name": "classifier", "instance_group": [{"name": "classifier_0", "count": 2, "kind": "KIND_CPU"},
                                                       {"name": "big", "count": 1, "kind": "KIND_CPU"}]}
    assert instance_names(served) == ["classifier_0_0", "classifier_0_1", "big_0"]
    assert instance_names({"name": "m", "instance_group": [{"count": 2}]}) == ["m_0_0", "m_0_1"]
    assert instance_names({"name": "m"}) == ["m_0_0"]


def test_check_instance_picks_the_nth_of_each_group_or_refuses_naming_the_instances():
    served = {"name": "classifier", "instance_group": [{"name": "classifier_0", "count": 2}, {"name": "classifier_1", "count": 1}]}
    assert check_instance(1, "classifier", served) == ["classifier_0_1"]
    assert check_instance(0, "classifier", served) == ["classifier_0_0", "classifier_1_0"]
    with pytest.raises(FaultError, match=r"model 'classifier' has no instance 2: its instances are classifier_0_0, "
                                         r"classifier_0_1, classifier_1_0 \(--instance takes the N of <model>_<group>_N, 0 to 1\)"):
        check_instance(2, "classifier", served)


def test_clear_is_a_command_without_a_fault():
    command = ChaosCommand.build("clear", "classifier", slow_ms=5)
    assert command.fault is None
    assert ChaosCommand.from_json(command.to_json()).fault is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "the command is not JSON"),
        ('{"fault": "hang"}', '"fault": ..., "model": ...'),
        ('{"fault": "melt", "model": "m"}', "unknown fault 'melt'.*or clear"),
        ('{"fault": "slow", "model": "m", "leak_cap_mb": 5}', r"fault slow takes no parameter\(s\) leak_cap_mb \(it takes: slow_ms\)"),
        ('{"fault": "hang", "model": "m", "set_at": 5}', r"takes no parameter\(s\) set_at \(it takes: none\)"),
        ('{"fault": "clear", "model": "m", "slow_ms": 5}', "clear takes no parameters, got slow_ms"),
        ('{"fault": "slow", "model": "m", "slow_ms": 0}', "slow_ms must be > 0"),
        ('{"fault": "hang", "model": ""}', "non-empty string"),
        ('{"fault": "hang", "model": 3}', "non-empty string, got 3"),
        ('{"fault": "hang", "model": "../etc"}', "invalid model name"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(text, message):
    with pytest.raises(FaultError, match=message):
        ChaosCommand.from_json(text)
