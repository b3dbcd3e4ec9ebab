"""The `fluidlite` command (also `python -m fluidlite`).

Subcommands: `dot` (draw a saved program), `show` (print it; `show --memory`: its memory plan), and
`demo` / `bench`, which hand the rest of the command line to `fluidlite.demo.main` / `fluidlite.bench.main`.
Errors print one line on stderr and exit non-zero; set FLUIDLITE_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

_MAX_NODES, _TIMEOUT = 250, 60.0  # fluidlite.graphviz's defaults (not imported: --help stays fast)

# subcommands implemented by other modules: name -> (module, help)
PASSTHROUGH = {
    "demo": ("fluidlite.demo", "train a small model with gradient clipping (arguments go to the demo)"),
    "bench": ("fluidlite.bench", "run the benchmarks (arguments go to the benchmark)"),
    "launch": ("fluidlite.distributed.launch", "run a script on K MPI workers: launch -n K script.py [args]"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fluidlite", description="fluidlite: a static computation-graph compiler (Fluid style).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    d = sub.add_parser("dot", help="draw a program saved with fluidlite.io.save_program",
                       description="Draw a saved program as .dot, .svg, .png or .pdf (rendering needs Graphviz).")
    d.add_argument("program", metavar="PROGRAM.json")
    d.add_argument("-o", "--output", metavar="OUT", help="OUT.dot/.svg/.png/.pdf; without it the DOT text is printed")
    d.add_argument("--block", type=int, default=None, help="draw only this block (default: all blocks)")
    d.add_argument("--collapse", nargs="?", const="scope", default="auto", choices=("auto", "none", "scope", "step"),
                   help="auto (default): an unrolled RNN as one step, the optimizer as one node; none: every op; "
                        "scope (also plain --collapse): one node per name scope; step: one per scope and RNN step")
    d.add_argument("--max-nodes", type=int, default=None, metavar="N",
                   help="refuse drawings with more nodes (default %d; 0: no limit)" % _MAX_NODES)
    d.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop Graphviz after this long (default %g; 0: no limit)" % _TIMEOUT)
    d.add_argument("--around", action="append", metavar="VAR", help="draw only the graph near VAR (repeatable)")
    d.add_argument("--hops", type=int, default=2, help="with --around: how many edges away to draw (default 2)")
    d.add_argument("--highlight", action="append", metavar="NAME", help="emphasise a variable or op type (repeatable)")
    d.add_argument("--rankdir", choices=("TB", "LR", "BT", "RL"), default="TB")
    d.add_argument("--no-legend", action="store_true")
    s = sub.add_parser("show", help="print a saved program as text (or its memory plan)")
    s.add_argument("program", metavar="PROGRAM.json")
    s.add_argument("--memory", action="store_true",
                   help="print the peak live bytes of one step of the program (and the live bytes per op)")
    s.add_argument("--batch", type=int, default=1, help="with --memory: the batch size fed (default 1)")
    s.add_argument("--fetch", action="append", metavar="VAR", help="with --memory: a fetched variable (repeatable)")
    for name, (_, help_text) in PASSTHROUGH.items():
        sp = sub.add_parser(name, help=help_text, add_help=False)
        sp.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _cmd_dot(args) -> int:
    from . import graphviz, io

    program = io.load_program(args.program)
    target = program
    if args.block is not None:
        if not 0 <= args.block < program.num_blocks:
            raise ValueError(f"--block {args.block}: the program has blocks 0..{program.num_blocks - 1}")
        target = program.block(args.block)
    max_nodes = graphviz.MAX_NODES if args.max_nodes is None else (args.max_nodes or None)
    options = dict(highlights=args.highlight, collapse=None if args.collapse == "none" else args.collapse,
                   around=args.around, hops=args.hops, rankdir=args.rankdir, legend=not args.no_legend,
                   max_nodes=max_nodes)
    if args.output in (None, "-"):
        sys.stdout.write(graphviz.to_dot(target, **options))
    else:
        timeout = graphviz.TIMEOUT if args.timeout is None else (args.timeout or None)
        # SIGTERM ends us through Python, so the Graphviz child is stopped too (on Linux it also
        # dies with us on SIGKILL: see fluidlite.childproc)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
        try:
            graphviz.draw(target, args.output, timeout=timeout, **options)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
        print(f"wrote {args.output}")
    return 0


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _cmd_show(args) -> int:
    from . import io

    program = io.load_program(args.program)
    if args.memory:
        return _show_memory(program, args)
    print(program)
    return 0


def _show_memory(program, args) -> int:
    import numpy as np

    from .executor import Executor

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    feed = {}
    for var in program.global_block().vars.values():
        if var.is_data:
            shape = tuple(args.batch if d == -1 else d for d in var.shape)
            feed[var.name] = np.zeros(shape, var.dtype)
    plan = Executor().compile(program, feed=feed, fetch_list=args.fetch or [])
    mem = plan.memory()
    print(f"memory plan of one step, batch {args.batch}, {len(plan.steps)} ops")
    print(mem.summary(plan.steps))
    for i, op_type, live in mem.timeline:
        mark = "  <- peak" if i == mem.peak_step else ""
        print(f"  {i:4d} {op_type:28s} {live:>14,} bytes{mark}")
    return 0


def _passthrough(name: str, rest: list) -> int:
    module_name = PASSTHROUGH[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the module exists but something it imports is missing
            raise
        print(f"fluidlite: {name} is not available yet", file=sys.stderr)
        return 2
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"fluidlite: {module_name} has no main(); {name} is not available yet", file=sys.stderr)
        return 2
    code = entry(rest)
    return 0 if code is None else int(code)


def main(argv=None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in PASSTHROUGH:  # everything after the name belongs to that command
            return _passthrough(argv[0], argv[1:])
        args = _parser().parse_args(argv)
        return {"dot": _cmd_dot, "show": _cmd_show}[args.command](args)
    except SystemExit as exc:  # --help, or a subcommand that calls sys.exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except _UsageError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fluidlite: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("FLUIDLITE_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"fluidlite: error: {msg}", file=sys.stderr)
        return 1
