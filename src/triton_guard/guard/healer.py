"""Reload an upstream whose Python stub died, from the side.

Triton 2.51 never restarts a dead Python stub: its model stays READY while
every request fails "Stub process ... is not healthy". A load request for
the model, with its own current config as an override, through Triton's
HTTP repository API (the server runs with --model-control-mode=explicit)
reloads only that model and starts a new stub.

The request runs in a thread of its own and is a plain HTTP call, so no
stub's request path waits for it (pb_utils.load_model held the calling
stub's interpreter for the whole reload: 7.9 s measured). The repository API
is restricted by `triton-guard serve`: the call carries the key header.

Every guard instance of a server may see the death: a file lock and a shared
time stamp in the state directory make one of them reload, at most once per
`min_interval_s` (the breaker's recovery period).

No Triton import: unit-tested with a fake `post`.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Mapping

from triton_guard import defaults
from triton_guard.guard.state_dir import read_json_state, write_json_state

# post(url, body or None for a GET, headers, timeout_s) -> (HTTP status, body text)
# Added to the upstream's config by a reload: a model that refuses unknown parameters cannot be healed.
RELOAD_PARAMETER = "triton_guard_reloaded_at"
Post = Callable[[str, bytes, Mapping[str, str], float], "tuple[int, str]"]


def http_post(url: str, body: bytes | None, headers: Mapping[str, str], timeout_s: float) -> tuple[int, str]:
    """POST `body` to `url` (a GET when body is None): (HTTP status, body text)."""
    request = urllib.request.Request(
        url, data=body, method="GET" if body is None else "POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class SideHealer:
    """Reloads `upstream` through the repository API when asked; never blocks the caller."""

    def __init__(
        self,
        upstream: str,
        *,
        http_url: str,
        api_key: str | None,
        min_interval_s: float,
        state_dir: str,
        post: Post = http_post,
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = defaults.HEAL_HTTP_TIMEOUT_S,
        why: str = "has a dead stub",  # said in the log line: the canary's leak reload says what leaks
    ) -> None:
        self.upstream = upstream
        self.why = why
        quoted = urllib.parse.quote(upstream, safe="")
        self.url = f"{http_url.rstrip('/')}/v2/repository/models/{quoted}/load"
        self.config_url = f"{http_url.rstrip('/')}/v2/models/{quoted}/config"
        self.headers = {defaults.API_KEY_HEADER: api_key} if api_key else {}
        self.min_interval_s = min_interval_s
        self._state_dir = state_dir
        self._stamp = f"heal-{upstream}.json"
        self._post = post
        self._log = log
        self._clock = clock
        self._timeout_s = timeout_s
        self._busy = threading.Lock()
        self.thread: threading.Thread | None = None  # the latest reload thread (tests join it)

    def request(self) -> bool:
        """Start a reload beside the caller unless one runs in this process; True if started."""
        if not self._busy.acquire(blocking=False):
            return False
        self.thread = threading.Thread(target=self._run, name=f"heal-{self.upstream}", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        try:
            self.heal()
        finally:
            self._busy.release()

    def heal(self) -> str:
        """One attempt, in the calling thread: 'reloaded', 'skipped' (another is at it, or too soon), 'failed'."""
        try:
            os.makedirs(self._state_dir, exist_ok=True)
            with open(os.path.join(self._state_dir, f"{self._stamp}.lock"), "w") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return "skipped"  # another guard process is reloading it now
                last = read_json_state(self._state_dir, self._stamp) or {}
                now = self._clock()  # CLOCK_MONOTONIC: one clock for every process of the host
                if now - last.get("at", -1e18) < self.min_interval_s:
                    return "skipped"
                write_json_state(self._state_dir, self._stamp, {"at": now, "pid": os.getpid()})
                self._log(f"guard: upstream '{self.upstream}' {self.why}; reloading it through {self.url}")
                # A load of a loaded model reloads it only if its files or its config
                # changed (measured: a plain load, or its own config as an override, was
                # a no-op), so the override is its config plus a RELOAD_PARAMETER stamp.
                status, text = self._post(self.config_url, None, self.headers, self._timeout_s)
                if status == 200:
                    config = json.loads(text)
                    config.setdefault("parameters", {})[RELOAD_PARAMETER] = {"string_value": f"{now:.6f}"}
                    body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
                    status, text = self._post(self.url, body, self.headers, self._timeout_s)
                # The interval counts from the end too: calls abandoned during a long reload
                # report the old stub's death after it, and must not reload the new one.
                write_json_state(self._state_dir, self._stamp, {"at": self._clock(), "pid": os.getpid()})
        except Exception as exc:  # the breaker keeps failing fast; the next death tries again
            self._log(f"guard: reloading '{self.upstream}' failed: {type(exc).__name__}: {exc}")
            return "failed"
        if status != 200:
            try:
                text = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                pass
            self._log(f"guard: reloading '{self.upstream}' failed: HTTP {status}: {text}")
            return "failed"
        self._log(f"guard: upstream '{self.upstream}' reloaded")
        return "reloaded"
