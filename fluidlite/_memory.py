"""Keep freed kernel outputs in the process heap (glibc only).

Kernels return fresh arrays every step. glibc hands large freed blocks back to the kernel, so the
next step's arrays arrive as new pages, each zeroed on first touch: about 3,400 page faults (a
quarter of the time) per MLP training step. Raising the mmap and trim thresholds keeps those
blocks for reuse. Set FLUIDLITE_MALLOPT=0 to leave malloc as it is.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 256 << 20
_done = None


def tune_malloc() -> bool:
    """Apply the thresholds once per process; True when glibc accepted them."""
    global _done
    if _done is None:
        _done = False
        if sys.platform.startswith("linux") and os.environ.get("FLUIDLITE_MALLOPT", "1") != "0":
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.gnu_get_libc_version  # glibc, not musl
            except (OSError, AttributeError):
                return False
            _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
