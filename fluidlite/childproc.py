"""Run a helper program (Graphviz `dot`) with a timeout, and never leave it running behind us.

The child gets its own process group, so killing it also kills anything it started. On Linux it
also asks the kernel to kill it when its parent dies (`prctl(PR_SET_PDEATHSIG, SIGKILL)`), which
covers a parent killed by SIGKILL or SIGTERM, where no Python code runs. A timeout, an exception
or Ctrl-C in the parent while it waits kills the child's group before the error propagates.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


class ChildTimeout(RuntimeError):
    """The child did not finish in time; it has been killed."""


def _pdeathsig_fn():
    """A preexec function setting PDEATHSIG, resolved before fork (nothing is looked up in the child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def preexec():
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


def kill_group(proc: subprocess.Popen):
    """SIGKILL the child's process group (it leads its own) and reap the child."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            proc.kill()
    proc.wait()


def run(argv: list, timeout: float | None, input_bytes: bytes | None = None):
    """(returncode, stdout bytes, stderr bytes) of `argv`; raises ChildTimeout after `timeout` s."""
    posix = os.name == "posix"
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=posix, preexec_fn=_pdeathsig_fn() if posix else None)
    try:
        out, err = proc.communicate(input_bytes, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise ChildTimeout(f"{os.path.basename(argv[0])} did not finish within {timeout:g} s and was stopped") from None
    except BaseException:  # Ctrl-C, SystemExit from a signal handler, ...
        kill_group(proc)
        raise
    return proc.returncode, out, err
