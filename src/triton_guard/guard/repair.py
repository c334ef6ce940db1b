"""What a breaker's state file should hold once a process has found it, damaged or not: pure rules.

SharedFileStore (shared_state.py) reads the file under its lock and asks
`checked_image` what to keep; these are the rules of its module docstring,
with no I/O, so each case is unit-tested on bytes:

* a valid file this process has been using: kept as it is;
* a valid file that is not the one this process last used (the path now
  names another file, or the file was unusable for a while): merged with this
  process's last good copy, the more severe wins (operator-forced OPEN, OPEN,
  HALF_OPEN, CLOSED), then the one that saw more transitions; a CLOSED copy
  never wins, so it cannot overwrite a breaker another process opened;
* a file whose numbers are intact (hot CRC) but whose name, window or claim
  is damaged: its state, with a fresh window;
* anything else (truncated, corrupt, empty, replaced by junk): this process's
  last good copy, except that CLOSED (or nothing known) resumes as HALF_OPEN:
  a damaged or unknown record is never taken to mean CLOSED;
* an empty file this process never saw, or a file of another layout version:
  a new breaker (not damage).
"""

from __future__ import annotations

from typing import NamedTuple

from triton_guard.guard import state_file as layout
from triton_guard.guard.record import BreakerRecord, Override, State


class Verdict(NamedTuple):
    image: bytearray  # what the file must hold now
    damage: str | None  # missing, replaced, truncated, corrupt; None: nothing lost
    outcome: str  # for the report: what was kept or rebuilt


def checked_image(
    name: str,
    found: bytes,
    *,
    good: bytes | None,
    claim: bytes,
    moved: bool,
    returning: bool,
    now: float,
) -> Verdict:
    """The image to keep for breaker `name`, from the file's bytes and this process's last good image.

    moved: the path names another file than the one this process held.
    returning: the file was unusable (read-only...) and this process lived on its copy.
    claim: this process's claim region, stamped on a rebuilt image.
    """
    prefix = layout.header_prefix(name)
    damage = None
    if layout.is_valid(found, prefix):
        found_rec = layout.record_of(found)
    else:
        damage = damage_kind(found, moved=moved, seen_before=good is not None, prefix=prefix)
        if damage is None:  # a new breaker, not damage
            return Verdict(_image(name, BreakerRecord(), claim), None, "a new breaker")
        found_rec = intact_state(found, prefix)
    if found_rec is None:
        return Verdict(image := rebuilt_image(name, good, claim, now), damage, f"rebuilt as {layout.state_name(image)}")
    rec, outcome = found_rec, f"rebuilt as {State(found_rec.state).name}"
    if (moved or returning) and good is not None:
        ours = layout.record_of(good)
        if severity(ours) > severity(found_rec):  # a CLOSED copy never wins
            rec = ours
            outcome = f"this process's {described(ours)} breaker kept (it is the more severe)"
            if damage is None and moved:
                damage = "replaced"
    if damage is None and rec is found_rec:
        return Verdict(bytearray(found), None, "kept")
    return Verdict(_image(name, rec, claim), damage, outcome)


def record_as_read(name: str, found: bytes | None, good: bytes | None, now: float) -> BreakerRecord | None:
    """What a reader (a snapshot, `status`, the canary) takes breaker `name`'s file to hold, writing nothing.

    The rules of `checked_image`, read-only, so a reader never sees CLOSED where
    the next guard call will not: a valid file as it is; intact numbers (hot
    CRC) with damage elsewhere, their state; anything else damaged (truncated,
    corrupt, gone after this process saw it) this process's last good copy,
    never CLOSED. `found` None: no file. None: no breaker (yet).
    """
    found = b"" if found is None else found
    prefix = layout.header_prefix(name)
    if layout.is_valid(found, prefix):
        return layout.record_of(found)
    if damage_kind(found, moved=False, seen_before=good is not None, prefix=prefix) is None:
        return None  # no breaker yet, or a new one (another layout version): CLOSED, unused
    rec = intact_state(found, prefix)
    if rec is not None:
        return rec
    return layout.record_of(rebuilt_image(name, good, bytes(layout.CLAIM_SIZE), now))


def intact_state(found: bytes, prefix: bytes) -> BreakerRecord | None:
    """An invalid image whose numbers are intact (hot CRC): its state, with a fresh window; else None."""
    numbers = layout.hot_numbers(found, prefix) if len(found) == layout.FILE_SIZE else None
    if numbers is None:
        return None
    rec = BreakerRecord.of(numbers, bytes(layout.RING_CAPACITY))
    rec.reset_window(rec.window_size)
    return rec


def damage_kind(found: bytes, *, moved: bool, seen_before: bool, prefix: bytes) -> str | None:
    """What happened to an invalid file; None: a new breaker, not damage."""
    if not found:
        if not seen_before:
            return None  # created just now (by this process or a peer)
        return "missing" if moved else "truncated"
    if len(found) >= 6 and found[:4] == layout.MAGIC and found[4:6] != prefix[4:6]:
        return None  # another layout version: a new breaker
    if moved:
        return "replaced"
    return "truncated" if len(found) < layout.FILE_SIZE else "corrupt"


def rebuilt_image(name: str, good: bytes | None, claim: bytes, now: float) -> bytearray:
    """The last good copy, by the rule: never CLOSED (a CLOSED copy, or none, resumes as HALF_OPEN)."""
    rec = layout.record_of(good) if good is not None else BreakerRecord()
    if rec.state == int(State.CLOSED) and rec.override != int(Override.FORCED_CLOSED):
        rec.state = int(State.HALF_OPEN)
        rec.since = now
        rec.generation += 1  # permits issued before the damage become stale
        rec.transitions += 1
        rec.trials_issued = rec.trials_succeeded = 0
        rec.last_trial_at = 0.0
    return _image(name, rec, claim)


def _image(name: str, rec: BreakerRecord, claim: bytes) -> bytearray:
    """A sealed image of breaker `name` holding `rec` and the claim region `claim`."""
    image = layout.initial_image(name)
    image[layout.CLAIM_OFFSET :] = claim
    layout.pack_record(image, rec)
    return image


def severity(rec: BreakerRecord) -> tuple[int, int]:
    """Which of two records of one breaker to keep: the more severe, then the one that saw more transitions."""
    if rec.override == int(Override.FORCED_OPEN):
        rank = 3
    else:
        rank = {int(State.OPEN): 2, int(State.HALF_OPEN): 1}.get(rec.state, 0)
    return rank, rec.transitions


def described(rec: BreakerRecord) -> str:
    if rec.override == int(Override.FORCED_OPEN):
        return "operator-forced OPEN"
    return State(rec.state).name
