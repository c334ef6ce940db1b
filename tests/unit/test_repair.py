"""guard/repair.py: what a breaker file found damaged, moved or foreign should hold, on bytes alone."""

from __future__ import annotations

from triton_guard.guard import repair
from triton_guard.guard import state_file as layout
from triton_guard.guard.record import BreakerRecord, Override, State

NAME = "classifier"
CLAIM = bytes(layout.CLAIM_SIZE)


def image(state=State.CLOSED, transitions=0, override=Override.AUTO, **numbers) -> bytes:
    rec = BreakerRecord(state=int(state), transitions=transitions, override=int(override), generation=transitions,
                        **numbers)  # fmt: skip
    out = layout.initial_image(NAME)
    layout.pack_record(out, rec)
    return bytes(out)


def check(found, good=None, moved=False, returning=False):
    return repair.checked_image(NAME, found, good=good, claim=CLAIM, moved=moved, returning=returning, now=7.0)


def state_of(verdict) -> tuple[State, int]:
    rec = layout.record_of(verdict.image)
    return State(rec.state), rec.transitions


def test_a_valid_file_in_use_is_kept_byte_for_byte():
    found = image(State.OPEN, 1)
    verdict = check(found, good=image())
    assert verdict.image == found and verdict.damage is None


def test_a_moved_file_keeps_the_more_severe_record_and_a_closed_copy_never_wins():
    assert state_of(check(image(State.OPEN, 1), good=image(State.CLOSED, 3), moved=True)) == (State.OPEN, 1)
    kept = check(image(State.CLOSED, 0), good=image(State.OPEN, 1), moved=True)
    assert state_of(kept) == (State.OPEN, 1) and kept.damage == "replaced"
    assert state_of(check(image(State.OPEN, 5), good=image(State.OPEN, 2), moved=True)) == (State.OPEN, 5)
    assert state_of(check(image(State.OPEN, 1), good=image(State.OPEN, 4), moved=True)) == (State.OPEN, 4)


def test_an_operators_forced_open_outranks_everything():
    forced = image(State.OPEN, 2, override=Override.FORCED_OPEN)
    kept = check(image(State.OPEN, 9), good=forced, moved=True)
    assert layout.record_of(kept.image).override == int(Override.FORCED_OPEN)


def test_a_file_usable_again_is_merged_the_same_way_without_calling_it_damage():
    verdict = check(image(State.CLOSED, 0), good=image(State.OPEN, 1), returning=True)
    assert state_of(verdict) == (State.OPEN, 1) and verdict.damage is None


def test_a_truncated_or_corrupt_file_is_rebuilt_from_the_copy_and_never_closed():
    assert check(b"", good=image(State.OPEN, 1)).damage == "truncated"
    assert state_of(check(image(State.OPEN, 1)[:500], good=image(State.OPEN, 1))) == (State.OPEN, 1)
    rebuilt = check(image(State.CLOSED, 2)[:500], good=image(State.CLOSED, 2))
    assert state_of(rebuilt) == (State.HALF_OPEN, 3) and rebuilt.damage == "truncated"
    assert layout.record_of(rebuilt.image).generation == 3  # permits issued before the damage are stale
    junk = bytearray(image(State.CLOSED))
    junk[layout.NUMBERS_OFFSET] ^= 0xFF
    assert check(bytes(junk), good=None).damage == "corrupt"
    assert state_of(check(bytes(junk), good=None))[0] is State.HALF_OPEN  # nothing known: not CLOSED either


def test_intact_numbers_with_a_damaged_window_keep_their_state_with_a_fresh_window():
    found = bytearray(image(State.CLOSED, 0, window_size=20, window_count=5, window_failures=2, consecutive_failures=2))
    found[layout.RING_OFFSET] = 0x03  # the ring no longer matches its CRC
    verdict = check(bytes(found), good=None)
    rec = layout.record_of(verdict.image)
    assert (State(rec.state), rec.consecutive_failures, rec.window_count) == (State.CLOSED, 2, 0)
    assert verdict.damage == "corrupt" and layout.is_valid(verdict.image)


def test_new_breakers_are_not_damage():
    assert check(b"", good=None).damage is None
    other_version = layout.MAGIC + (layout.LAYOUT_VERSION - 1).to_bytes(2, "little") + b"\x00" * 90
    fresh = check(other_version, good=image(State.OPEN, 1))
    assert fresh.damage is None and state_of(fresh) == (State.CLOSED, 0)


def test_a_rebuilt_image_carries_this_processes_claim():
    claim = layout.encode_claim({"models": ["g"], "settings": {"timeout_ms": 5}})
    verdict = repair.checked_image(NAME, b"", good=image(State.OPEN, 1), claim=claim, moved=True, returning=False, now=1.0)
    assert layout.decode_claim(verdict.image) == {"models": ["g"], "settings": {"timeout_ms": 5}}


def read(found, good=None):
    return repair.record_as_read(NAME, found, good, now=7.0)


def test_a_reader_takes_a_damaged_file_as_its_next_call_will_repair_it_never_closed():
    open_ = image(State.OPEN, 1)
    assert State(read(open_).state) is State.OPEN  # valid: as it is
    ring_damaged = bytearray(open_)
    ring_damaged[layout.RING_OFFSET + 100] ^= 0xFF  # the cold block fails its CRC, the numbers are intact
    assert State(read(bytes(ring_damaged)).state) is State.OPEN
    numbers_damaged = bytearray(image(State.CLOSED))
    numbers_damaged[layout.NUMBERS_OFFSET] ^= 0xFF
    assert State(read(bytes(numbers_damaged)).state) is State.HALF_OPEN  # nothing known: not CLOSED
    assert State(read(open_[:500], good=open_).state) is State.OPEN  # truncated: this reader's copy
    assert State(read(b"", good=image(State.CLOSED, 2)).state) is State.HALF_OPEN  # gone after it was seen
    # Each agrees with what a guard's next transaction writes.
    for found, good in ((bytes(ring_damaged), None), (bytes(numbers_damaged), None), (open_[:500], open_)):
        assert read(found, good).state == layout.record_of(check(found, good=good).image).state


def test_a_reader_sees_no_breaker_where_there_is_none_yet():
    assert read(None) is None and read(b"") is None
    other_version = layout.MAGIC + (layout.LAYOUT_VERSION - 1).to_bytes(2, "little") + b"\x00" * 90
    assert read(other_version) is None
