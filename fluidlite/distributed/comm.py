"""MPI underneath fluidlite.distributed: the world, collectives that give up after a deadline, and the
MPI installation that came with the `[dist]` extra (the `mpich` wheel: mpiexec and libmpi).

Outside an MPI launcher (no PMI_* / OMPI_* variables) the world is one process, rank 0 of 1, and mpi4py
is never imported: every collective is the identity. Under `mpirun` each collective is non-blocking
(`Iallreduce`, `Ibcast`) and polled until a deadline (`init(timeout=...)`, else the environment
variable FLUIDLITE_DIST_TIMEOUT, else 300 s); at the deadline the ranks that did not answer a probe are
named in a `DistributedError`. An uncaught exception on any rank aborts the whole job (as
`python -m mpi4py` does) so no worker waits forever for it.
"""
from __future__ import annotations

import os
import socket
import sys
import time

import numpy as np

ENV_TIMEOUT = "FLUIDLITE_DIST_TIMEOUT"
ENV_LAUNCH_DIR = "FLUIDLITE_LAUNCH_DIR"  # set by `fluidlite launch`: each rank records host.pid -> rank
DEFAULT_TIMEOUT = 300.0
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")
_PROBE_TAG = 7301


class DistributedError(RuntimeError):
    """A distributed setup or collective failed (not initialised, programs differ, a rank did not answer)."""


class _World:
    def __init__(self):
        self.initialized = False
        self.comm = None  # None: a single process, no MPI
        self.rank, self.size = 0, 1
        self.timeout = DEFAULT_TIMEOUT


WORLD = _World()


def mpich_paths() -> dict:
    """Paths of the `mpich` wheel's mpiexec and libmpi, when that distribution is installed."""
    import importlib.metadata as md

    try:
        dist = md.distribution("mpich")
    except md.PackageNotFoundError:
        return {}
    found = {}
    for f in dist.files or ():
        name = os.path.basename(str(f))
        if name in ("mpiexec", "libmpi.so.12", "libmpi.12.dylib"):
            path = os.path.realpath(str(dist.locate_file(f)))
            if os.path.exists(path):
                found["mpiexec" if name == "mpiexec" else "libmpi"] = path
    return found


def find_mpiexec() -> str:
    """The launcher: mpich's own, else the one next to the Python executable, else on PATH."""
    import shutil

    candidates = [mpich_paths().get("mpiexec"), os.path.join(os.path.dirname(sys.executable), "mpiexec"),
                  shutil.which("mpiexec"), shutil.which("mpirun")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return os.path.realpath(c)  # hydra finds its proxy next to its real path, not a symlink's
    raise DistributedError("no mpiexec found: pip install 'fluidlite[dist]' (brings mpi4py and the mpich wheel)")


def _import_mpi():
    lib = mpich_paths().get("libmpi")
    if lib and "MPI4PY_LIBMPI" not in os.environ:
        os.environ["MPI4PY_LIBMPI"] = lib  # the wheel's libmpi, also when it is not under sys.prefix
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"this process was started by an MPI launcher but mpi4py cannot load ({exc}); "
                               f"pip install 'fluidlite[dist]'") from exc
    return MPI


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def init(timeout=None):
    """Join the MPI world (idempotent). Without an MPI launcher: a world of one process."""
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"init: timeout must be a number of seconds > 0, got {timeout!r}")
        WORLD.timeout = float(timeout)
    elif not WORLD.initialized:
        WORLD.timeout = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT))
    if WORLD.initialized:
        return
    if launched_by_mpi():
        MPI = _import_mpi()
        comm = MPI.COMM_WORLD
        comm.Set_errhandler(MPI.ERRORS_RETURN)
        WORLD.comm, WORLD.rank, WORLD.size = comm, comm.Get_rank(), comm.Get_size()
        _abort_on_uncaught_exception()
        if os.environ.get(ENV_LAUNCH_DIR):
            path = os.path.join(os.environ[ENV_LAUNCH_DIR], f"{socket.gethostname()}.{os.getpid()}")
            with open(path, "w") as f:
                f.write(str(WORLD.rank))
    WORLD.initialized = True


def require(what) -> _World:
    if not WORLD.initialized:
        raise DistributedError(f"{what} needs fl.distributed.init() first (call it once at the top of the script, "
                               f"before building the program)")
    return WORLD


def _abort_on_uncaught_exception():
    previous = sys.excepthook

    def hook(kind, value, tb):
        # the reason first: the launcher forwards output asynchronously and Abort may cut the traceback short
        sys.stderr.write(f"fluidlite.distributed: rank {WORLD.rank} of {WORLD.size} stopped on an uncaught "
                         f"{kind.__name__}: {value}; aborting every worker\n")
        sys.stderr.flush()
        previous(kind, value, tb)
        sys.stderr.flush()
        time.sleep(0.5)  # let the launcher pass the output on before Abort ends every process
        WORLD.comm.Abort(1)

    sys.excepthook = hook


def _unresponsive(comm, grace) -> list:
    """Ranks that do not answer a probe within `grace` seconds (every rank that timed out sends one)."""
    me, size = comm.Get_rank(), comm.Get_size()
    token = np.zeros(1, np.int8)
    boxes = {r: np.zeros(1, np.int8) for r in range(size) if r != me}
    sends = [comm.Isend(token, dest=r, tag=_PROBE_TAG) for r in boxes]
    recvs = {r: comm.Irecv(box, source=r, tag=_PROBE_TAG) for r, box in boxes.items()}
    deadline = time.monotonic() + grace
    while recvs and time.monotonic() < deadline:
        for r in [r for r, req in recvs.items() if req.Test()]:
            del recvs[r]
        time.sleep(0.01)
    del sends
    return sorted(recvs)


def wait(request, what):
    """Poll a non-blocking MPI request until it completes or the deadline passes (DistributedError)."""
    start = time.monotonic()
    deadline = start + WORLD.timeout
    while not request.Test():  # each Test drives MPI's progress, as a blocking wait's busy poll does
        now = time.monotonic()
        if now > start + 0.2:  # a long wait (a slower peer): poll less often, free the core
            time.sleep(1e-3)
        if now > deadline:
            missing = _unresponsive(WORLD.comm, min(WORLD.timeout, 2.0))
            who = f"rank(s) {missing} did not reach it" if missing else "no rank answered in time"
            raise DistributedError(f"{what} on rank {WORLD.rank} timed out after {WORLD.timeout:g} s: {who} "
                                   f"(died, hung, or runs a different program); set init(timeout=...) or "
                                   f"{ENV_TIMEOUT} to wait longer")


def allreduce_inplace(buf: np.ndarray, what="allreduce"):
    """Sum a contiguous array over every rank, in place."""
    if WORLD.comm is None:
        return buf
    from mpi4py import MPI

    wait(WORLD.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), what)
    return buf


def bcast_inplace(buf: np.ndarray, root, what="broadcast"):
    if WORLD.comm is not None:
        wait(WORLD.comm.Ibcast(buf, root=root), what)
    return buf


def barrier(what="barrier"):
    if WORLD.comm is not None:
        wait(WORLD.comm.Ibarrier(), what)


def reduce_bucket(xs, reduce, weight):
    """What the allreduce op computes for one bucket: the arrays `xs` (one dtype) packed into one
    contiguous buffer, summed over the ranks in place, returned as views of that buffer.

    reduce="sum": sum over ranks. reduce="mean": sum_r(weight_r * x_r) / sum_r(weight_r), where the
    weight is this rank's batch size (the op's Weight input) or 1 (a plain mean of the ranks' values);
    the weights travel in the same buffer, one extra element."""
    if WORLD.comm is None:
        return list(xs)  # one process: the sum and every mean are the values themselves
    mean = reduce == "mean"
    total = sum(x.size for x in xs)
    buf = np.empty(total + (1 if mean else 0), dtype=xs[0].dtype)
    offset = 0
    for x in xs:
        part = buf[offset:offset + x.size]
        if mean and weight != 1:
            np.multiply(x.reshape(-1), weight, out=part)
            if weight == 0:
                part[:] = 0  # an empty shard contributes nothing (its mean may be NaN)
        else:
            part[:] = x.reshape(-1)
        offset += x.size
    if mean:
        buf[total] = weight
    allreduce_inplace(buf, f"allreduce of {len(xs)} gradient(s)")
    if mean:
        buf[:total] /= buf[total]
    out, offset = [], 0
    for x in xs:
        out.append(buf[offset:offset + x.size].reshape(x.shape))
        offset += x.size
    return out
