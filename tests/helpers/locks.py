"""``flock`` probes from a second process, to observe pvreg's locks as another pvreg would.

``flock`` locks belong to an open file description, so a second process sees exactly
what a concurrent ``pvreg`` (or ``gc``) would: :func:`can_lock` tries a non-blocking
lock there and reports whether it got it; :class:`LockHolder` keeps a lock in a child
until told to let go.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_PROBE = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, (fcntl.LOCK_SH if sys.argv[2] == "shared" else fcntl.LOCK_EX) | fcntl.LOCK_NB)
except BlockingIOError:
    print("blocked")
else:
    print("locked")
"""

_HOLD = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_SH if sys.argv[2] == "shared" else fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
"""


def can_lock(path: Path, *, shared: bool) -> bool:
    """Whether another process could take a shared (or exclusive) lock on ``path`` right now."""
    r = subprocess.run([sys.executable, "-c", _PROBE, str(path), "shared" if shared else "exclusive"],
                       capture_output=True, text=True, timeout=60, check=True)
    return r.stdout.strip() == "locked"


class LockHolder:
    """A child process holding a shared or exclusive ``flock`` on ``path`` for the ``with`` block."""

    def __init__(self, path: Path, *, shared: bool) -> None:
        self.args = [sys.executable, "-c", _HOLD, str(path), "shared" if shared else "exclusive"]

    def __enter__(self) -> LockHolder:
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"
        return self

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)

    def __exit__(self, *exc: object) -> None:
        self.release()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
