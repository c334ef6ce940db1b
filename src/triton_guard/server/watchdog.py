"""The watchdog: a standalone program that cleans up after a server whose serve died.

LocalServer.start runs this file by path (`sys.executable -I watchdog.py`)
beside tritonserver, in a session of its own, and holds its stdin. When serve
ends, however it ends (SIGKILL included), stdin reaches EOF: the watchdog then
kills what is left of the server's process group (only if that group is still
this server: its leader's command line carries the shm prefix) and removes
the server's shared memory and work directory.

Its task comes in the environment variable TASK_ENV (JSON: [pgid, shm prefix,
workdir, shm dir]), not in argv: only tritonserver and its stubs may carry
the prefix in their command lines. It imports nothing from triton_guard (only
the standard library), so that it starts fast and runs whatever state the
package is in.
"""

import json
import os
import shutil
import signal
import sys
import time

TASK_ENV = "TRITON_GUARD_WATCHDOG"


def main() -> None:
    pgid, prefix, workdir, shm = json.loads(os.environ.pop(TASK_ENV))
    sys.stdin.buffer.read()

    def ours():
        try:
            return prefix.encode() in open(f"/proc/{pgid}/cmdline", "rb").read()
        except OSError:
            return False

    if ours():
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        for _ in range(100):
            if not ours():
                break
            time.sleep(0.05)
    for name in os.listdir(shm):
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(shm, name))
            except OSError:
                pass
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
