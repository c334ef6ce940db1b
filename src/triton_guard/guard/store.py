"""The in-process breaker store, and the claims that keep one breaker on one configuration.

MemoryStore keeps records in a dict (unit tests, the client-side guard: one
process). Its records are copy-on-write: a transaction changes a copy and
publishes it at the end, so `peek` hands out the published record itself,
without a lock. SharedFileStore (shared_state.py) keeps them in a file every
guard process of a server shares; both answer the same BreakerStore protocol
(triton_guard.guard.breaker), and their transactions end alike (`Transaction`).

Claims. The guard models of one upstream share its breaker, so they must
share its settings: `claim()` stamps the breaker with the guard's model name
and its breaker settings; a guard with other settings gets SettingsConflict,
naming the models that claimed it and every differing setting (instead of one
guard resetting the other's window). A model that is the breaker's only
claimer may change its settings (a reload).
"""

from __future__ import annotations

import hashlib
import json
import threading
from types import TracebackType
from typing import Collection, Mapping

from triton_guard.errors import SettingsConflict
from triton_guard.guard.config import GuardConfig
from triton_guard.guard.record import BreakerRecord, Numbers

# A bulkhead is per guard instance: guards of one upstream may size theirs differently.
PER_INSTANCE_SETTINGS = frozenset({"max_inflight"})


class MemoryStore:
    """Records in a dict; one process only."""

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}
        self._numbers: dict[str, Numbers] = {}  # of each published record, for peek
        self._claims: dict[str, dict] = {}
        self._lock = threading.Lock()

    def transaction(self, name: str) -> _MemoryTransaction:
        return _MemoryTransaction(self, name)

    def peek(self, name: str, now: float = 0.0) -> Numbers | None:
        # Published records are never changed again (copy-on-write): no lock needed.
        return self._numbers.get(name)

    def read(self, name: str) -> BreakerRecord | None:
        rec = self._records.get(name)
        return rec.copy() if rec is not None else None

    def list_breakers(self) -> list[str]:
        with self._lock:
            return sorted(self._records)

    def claim(self, name: str, model: str, settings: Mapping[str, object], gone: Collection[str] = ()) -> None:
        """See SharedFileStore.claim."""
        with self._lock:
            current = without(self._claims.get(name), gone)
            problem = conflict(name, model, settings, current)
            if problem:
                raise SettingsConflict(problem)
            self._claims[name] = merged_claim(current, model, settings)


class Transaction:
    """The end of `with store.transaction(name) as rec:`, for every store.

    The change is kept (`_commit`) only when the block raised nothing; the
    locks are released (`_end`) either way.
    """

    __slots__ = ()

    def _commit(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._end()


class _MemoryTransaction(Transaction):
    __slots__ = ("_store", "_name", "_rec")

    def __init__(self, store: MemoryStore, name: str) -> None:
        self._store = store
        self._name = name

    def __enter__(self) -> BreakerRecord:
        store = self._store
        store._lock.acquire()
        current = store._records.get(self._name)
        self._rec = current.copy() if current is not None else BreakerRecord()
        return self._rec

    def _commit(self) -> None:
        self._store._records[self._name] = self._rec
        self._store._numbers[self._name] = self._rec.numbers()

    def _end(self) -> None:
        self._store._lock.release()


# --- settings claims ---------------------------------------------------------------------


def breaker_settings(config: GuardConfig) -> dict[str, int | float]:
    """The settings every guard of one upstream must agree on."""
    return {k: v for k, v in config.to_dict().items() if k not in PER_INSTANCE_SETTINGS}


def settings_fingerprint(settings: Mapping[str, object]) -> int:
    digest = hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "little") or 1  # 0 means "not claimed"


def without(claim: dict | None, gone: Collection[str]) -> dict | None:
    """The claim less the guard models known to be gone (unloaded, or no longer guards): None if none is left."""
    if claim is None or not gone:
        return claim
    models = [m for m in claim.get("models", []) if m not in gone]
    return {**claim, "models": models} if models else None


def merged_claim(claim: dict | None, model: str, settings: Mapping[str, object]) -> dict:
    """The claim once `model` joined it with `settings` (checked by `conflict` first)."""
    models = [] if claim is None or claim.get("settings") != dict(settings) else list(claim.get("models", []))
    return {"models": sorted({*models, model}), "settings": dict(settings)}


def conflict(name: str, model: str, settings: Mapping[str, object], claim: dict | None) -> str | None:
    """Why `model` may not share breaker `name` with `settings`, or None."""
    if claim is None:
        return None
    theirs = claim.get("settings") or {}
    others = [m for m in claim.get("models", []) if m != model]
    if not others:  # unclaimed, or only this model (a reload with new settings)
        return None
    differing = [
        f"{key}={settings.get(key)!r} here, {theirs.get(key)!r} there"
        for key in sorted(set(settings) | set(theirs))
        if settings.get(key) != theirs.get(key)
    ]
    if not differing:
        return None
    return (
        f"guard model '{model}' and guard model(s) {', '.join(repr(m) for m in others)} share the breaker of "
        f"upstream '{name}' but their settings differ: {'; '.join(differing)}. "
        "Give every guard of one upstream the same breaker settings"
    )
