"""`fluidlite launch -n K [--hostfile FILE] [--timeout S] script.py [args...]`: run a script on K MPI
workers with the mpiexec of the `[dist]` extra (the mpich wheel's hydra launcher).

mpiexec stops every worker as soon as one dies; the launcher then names the rank that died (each
worker records its host and pid at `fl.distributed.init()`), and exits with that worker's status.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from .comm import ENV_LAUNCH_DIR, ENV_TIMEOUT, find_mpiexec, mpich_paths

_BANNER = re.compile(r"PID (\d+) RUNNING AT (\S+)")
_CODE = re.compile(r"(EXIT CODE|KILLED BY SIGNAL): (\d+)")


def _parser():
    p = argparse.ArgumentParser(prog="fluidlite launch", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--np", dest="n", type=int, required=True, help="number of workers")
    p.add_argument("--hostfile", help="mpiexec hostfile: one 'host:slots' per line (several machines)")
    p.add_argument("--timeout", type=float, help=f"seconds a collective waits for the others ({ENV_TIMEOUT})")
    p.add_argument("--mpiexec-arg", action="append", default=[], help="extra argument for mpiexec (repeatable)")
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def command(n, script, args=(), hostfile=None, extra=()) -> list:
    """The mpiexec command line `fluidlite launch` runs."""
    cmd = [find_mpiexec(), "-n", str(n)]
    if hostfile:
        cmd += ["-f", hostfile]
    return cmd + list(extra) + [sys.executable, "-u", script, *args]


def environment(timeout=None, launch_dir=None) -> dict:
    env = dict(os.environ)
    lib = mpich_paths().get("libmpi")
    if lib:
        env.setdefault("MPI4PY_LIBMPI", lib)
    if timeout is not None:
        env[ENV_TIMEOUT] = str(timeout)
    if launch_dir:
        env[ENV_LAUNCH_DIR] = launch_dir
    return env


def _dead_rank(output_tail, launch_dir):
    """(rank, pid, host, code) of the worker mpiexec reported as terminated, if it can be told."""
    pid = host = code = None
    for line in output_tail:
        if m := _BANNER.search(line):
            pid, host = m.group(1), m.group(2)
        elif (m := _CODE.search(line)) and pid is not None:
            code = m.group(2)
    if pid is None:
        return None
    for name in os.listdir(launch_dir):
        if name.endswith(f".{pid}"):
            with open(os.path.join(launch_dir, name)) as f:
                return f.read().strip(), pid, host, code
    return "?", pid, host, code


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.n < 1:
        print("fluidlite launch: -n must be >= 1", file=sys.stderr)
        return 2
    if not os.path.exists(args.script):
        print(f"fluidlite launch: no such script {args.script!r}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fluidlite_launch_") as launch_dir:
        cmd = command(args.n, args.script, args.args, args.hostfile, args.mpiexec_arg)
        proc = subprocess.Popen(cmd, env=environment(args.timeout, launch_dir), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        tail = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail = (tail + [line])[-50:]
        code = proc.wait()
        if code != 0:
            dead = _dead_rank(tail, launch_dir)
            if dead is not None:
                rank, pid, host, status = dead
                print(f"fluidlite launch: worker rank {rank} (pid {pid} on {host}) terminated (exit code {status}); "
                      f"mpiexec stopped the other workers", file=sys.stderr)
            else:
                print(f"fluidlite launch: mpiexec exited with status {code}", file=sys.stderr)
        return code
