"""Draw programs with Graphviz: `to_dot` gives DOT text, `draw` writes .dot/.svg/.png/.pdf.

Ops are boxes filled by role (`ROLE_COLORS`, shown in a legend); variables are ellipses
labelled `name` and `dtype[shape]`; parameters are cylinders, gradients dashed (see `dot_text`).

Large programs stay readable: by default (`collapse="auto"`) an unrolled RNN is drawn as one step
with its repeat count and the edges that carry state, and optimizer ops with their state as one node
(see `graph_fold`); `collapse="scope"` folds each name scope; `around`/`hops` keeps only the part of
the graph near some variables. A drawing above `max_nodes` nodes is refused with a message (Graphviz
takes minutes on such graphs and the result cannot be read); rendering stops after `timeout` seconds.
"""
from __future__ import annotations

import os
import re
import shutil
import warnings

from . import childproc
from .dot_text import (CARRY, HIGHLIGHT, ROLE_COLORS, VAR_STYLES, _attrs, _Dot, _draw_block, _edge_attrs,  # noqa: F401
                       _groups, _legend, quote, scope_of, step_scope_of, TYPE_COLORS)
from .framework import Block, Operator, Program, Variable
from .graph import neighborhood, op_node, versioned_graph

MAX_NODES = 250  # dot takes seconds up to about here, then minutes to hours; nobody reads more anyway
TIMEOUT = 60.0
FORMATS = ("dot", "svg", "png", "pdf")


class GraphvizNotFound(RuntimeError):
    """The Graphviz `dot` program is needed to render and is not on PATH."""


class GraphTooLarge(ValueError):
    """The drawing would have more than `max_nodes` nodes."""


class RenderTimeout(RuntimeError):
    """Graphviz did not finish within the timeout (it was stopped)."""


def _blocks(target) -> list:
    if isinstance(target, Program):
        return list(target.blocks)
    if isinstance(target, Block):
        return [target]
    raise TypeError(f"expected a Program or a Block, got {type(target).__name__}")


def _names_of(items, what) -> list:
    """Variables, Operators and names (str) from a single item or an iterable."""
    if items is None:
        return []
    if isinstance(items, (str, Variable, Operator)):
        items = [items]
    out = []
    for item in items:
        if not isinstance(item, (str, Variable, Operator)):
            raise TypeError(f"{what}: expected Variables, Operators or names, got {type(item).__name__}")
        out.append(item)
    return out


def _collapse_fn(collapse):
    if collapse is None or collapse is False or collapse == "none" or collapse == "auto":
        return None
    if collapse is True or collapse == "scope":
        return scope_of
    if collapse == "step":
        return step_scope_of
    if callable(collapse):
        return collapse
    raise ValueError(f"collapse must be 'auto', None, True, 'scope', 'step' or a callable op -> group name, "
                     f"got {collapse!r}")


def to_dot(program_or_block, highlights=None, collapse="auto", around=None, hops=2, rankdir="TB",
           legend=True, max_nodes=MAX_NODES) -> str:
    """DOT text for a Program (all blocks) or one Block.

    - `highlights`: Variables, Operators or names to emphasise (a name that is no variable
      matches op types).
    - `collapse`: "auto" (default) draws an unrolled RNN as one step (ops labelled with the steps
      they stand for when not all, state-carrying edges blue and marked `t-1`) and the optimizer
      ops with their state as one node per optimizer; None (or "none") draws every op; True (or
      "scope") folds the ops of each name scope (see `scope_of`) and role into one summary node;
      "step" keeps unrolled RNN steps apart (`step_scope_of`); a callable `op -> group name or
      None` defines the groups. Variables used only inside one group are hidden.
    - `around` (Variables or names) with `hops`: draw only nodes within `hops` edges of them
      (var -> op -> var is two hops).
    - `max_nodes`: above this many nodes "auto" folds by name scope too (with a warning saying how
      to get the full graph), and anything else raises `GraphTooLarge` (None: no limit).
    """
    try:
        return _to_dot(program_or_block, highlights, collapse, around, hops, rankdir, legend, max_nodes)
    except GraphTooLarge as exc:
        if collapse != "auto":
            raise
        warnings.warn(f"{exc}; drawn folded by name scope instead (collapse='scope')", stacklevel=2)
        return _to_dot(program_or_block, highlights, "scope", around, hops, rankdir, legend, max_nodes)


def _to_dot(program_or_block, highlights, collapse, around, hops, rankdir, legend, max_nodes) -> str:
    if max_nodes is not None and (not isinstance(max_nodes, int) or isinstance(max_nodes, bool) or max_nodes < 1):
        raise ValueError(f"max_nodes must be a positive int or None, got {max_nodes!r}")
    blocks = _blocks(program_or_block)
    group_fn = _collapse_fn(collapse)
    hl_items = _names_of(highlights, "highlights")
    hl_ops = {id(x) for x in hl_items if isinstance(x, Operator)}
    hl_names = {x.name if isinstance(x, Variable) else x for x in hl_items if not isinstance(x, Operator)}
    seeds = {x.name if isinstance(x, Variable) else x for x in _names_of(around, "around")
             if not isinstance(x, Operator)}
    seed_ops = {id(x) for x in _names_of(around, "around") if isinstance(x, Operator)}
    _check_known(blocks, hl_names, "highlights", allow_op_types=True)
    _check_known(blocks, seeds, "around", allow_op_types=False)
    params = {p.name for b in blocks for p in b.program.all_parameters()}
    hl_types = {n for n in hl_names if not any(b._find_var(n) for b in blocks)}

    dot = _Dot()
    out = dot.lines
    out.append("digraph program {")
    out.append(f"  graph {_attrs(rankdir=rankdir, fontname='Helvetica', fontsize='11', compound='true')};")
    out.append(f"  node {_attrs(fontname='Helvetica', fontsize='10')};")
    out.append(f"  edge {_attrs(color='#555555', arrowsize='0.7', fontname='Helvetica', fontsize='10')};")
    style = dict(hl_ops=hl_ops, hl_types=hl_types, hl_names=hl_names, seeds=seeds, params=params,
                 fold=collapse in ("auto", "scope", True))
    for block in blocks:
        g = versioned_graph(block)
        keep = set(g.nodes)
        if seeds or seed_ops:
            start = [n for n, d in g.nodes(data=True) if d.get("name") in seeds]
            start += [op_node(i) for i, op in enumerate(block.ops) if id(op) in seed_ops]
            keep = neighborhood(g, start, hops) if start else set()
        _draw_block(dot, block, g, keep, _groups(block, keep, group_fn), len(blocks) > 1, style)
    if max_nodes is not None and dot.n_nodes > max_nodes:
        raise GraphTooLarge(_too_large(dot.n_nodes, max_nodes, collapse))
    for (src, dst), marks in dot.edges.items():
        out.append(f"  {src} -> {dst}{_edge_attrs(marks, dot.n_steps)};")
    if legend:
        _legend(out, carry=any(m[0] == "carry" for marks in dot.edges.values() for m in marks))
    out.append("}")
    return "\n".join(out) + "\n"


def _too_large(n, max_nodes, collapse) -> str:
    hint = ("fold it with collapse='auto' (RNN steps, optimizer) or collapse='scope' (one node per layer), or "
            if collapse in (None, False, "none", "step") or callable(collapse) else "")
    return (f"the drawing would have {n} nodes, more than max_nodes={max_nodes}: Graphviz takes minutes to hours "
            f"on such graphs and nobody can read the result. To see it, {hint}draw part of it with "
            f"around=[variables], hops=k; for the full graph pass collapse=None, max_nodes=None (and a large "
            f"timeout to draw(); on the command line: fluidlite dot --collapse none --max-nodes 0 --timeout 0)")


def _check_known(blocks, names, what, allow_op_types):
    types = {op.type for b in blocks for op in b.ops}
    for n in names:
        if not any(b._find_var(n) is not None for b in blocks) and not (allow_op_types and n in types):
            raise ValueError(f"{what}: {n!r} is no variable{' or op type' if allow_op_types else ''} of the program")


def _dot_path(path: str, fmt: str) -> str:
    return path if fmt == "dot" else os.path.splitext(path)[0] + ".dot"


def draw(program_or_block, path, timeout=TIMEOUT, **options) -> str:
    """Write `path` (.dot, .svg, .png or .pdf); the .dot text is always written next to it.

    Rendering needs the Graphviz `dot` program; without it `GraphvizNotFound` is raised
    (after the .dot file is written). `dot` is stopped after `timeout` seconds (None: no limit)
    and `RenderTimeout` raised. `options` go to `to_dot`. Returns `path`."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"draw: cannot tell the format of {path!r}; use one of " + ", ".join("." + f for f in FORMATS))
    text = to_dot(program_or_block, **options)
    dot_path = _dot_path(path, fmt)
    with open(dot_path, "w", encoding="utf-8") as f:
        f.write(text)
    if fmt != "dot":
        render(dot_path, path, fmt, timeout=timeout)
    return path


def render(dot_path: str, out_path: str, fmt: str, timeout=TIMEOUT):
    """Run Graphviz `dot -T<fmt>`; raises GraphvizNotFound, RenderTimeout, or RuntimeError with dot's message."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFound(
            f"rendering {out_path!r} needs the Graphviz 'dot' program, which is not on PATH "
            f"(install it: 'apt-get install graphviz' on Debian/Ubuntu, 'brew install graphviz' on macOS, "
            f"or see https://graphviz.org/download/); the DOT text was written to {dot_path!r}")
    try:
        code, _, err = childproc.run([exe, f"-T{fmt}", dot_path, "-o", out_path], timeout)
    except childproc.ChildTimeout:
        if os.path.exists(out_path):
            os.remove(out_path)  # a half-written picture
        raise RenderTimeout(
            f"Graphviz 'dot' did not finish rendering {dot_path!r} within {timeout:g} s and was stopped; draw less "
            f"(collapse='scope', or around=[variables]) or allow more time (draw(..., timeout=seconds or None); "
            f"fluidlite dot --timeout SECONDS)") from None
    if code != 0:
        msg = re.sub(r"\s+", " ", err.decode(errors="replace")).strip()
        raise RuntimeError(f"Graphviz 'dot' failed rendering {dot_path!r} to {fmt}: {msg}")
