"""Draw programs with Graphviz: `to_dot` gives DOT text, `draw` writes .dot/.svg/.png/.pdf.

Ops are boxes filled by role (`ROLE_COLORS`, shown in a legend); variables are ellipses
labelled `name` and `dtype[shape]`; parameters are cylinders, gradients dashed. Each node
carries machine-readable attributes (`kind`, `role`, `optype`, `var_kind`) that Graphviz
ignores but tools and tests can read.

Large programs stay readable with `collapse` (one summary node per name scope and role) and
`around`/`hops` (only the part of the graph near some variables).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np

from .framework import ROLES, Block, Operator, Parameter, Program, Variable
from .graph import neighborhood, op_node, versioned_graph
from .registry import GRAD_SUFFIX

ROLE_COLORS = {
    "forward": "#cfe2ff",
    "backward": "#f8c4c8",
    "error_clip": "#ffd966",
    "grad_clip": "#d7b8ff",
    "optimize": "#b6e3c2",
}
TYPE_COLORS = {"allreduce": "#7fd1d9"}  # op types with a colour of their own, whatever their role
VAR_STYLES = {  # var_kind -> DOT attributes
    "var": {"shape": "ellipse", "style": "solid"},
    "data": {"shape": "invhouse", "style": "filled", "fillcolor": "#eeeeee"},
    "persistable": {"shape": "cylinder", "style": "filled", "fillcolor": "#f2f2f2"},
    "parameter": {"shape": "cylinder", "style": "filled", "fillcolor": "#ffe9a8"},
    "grad": {"shape": "ellipse", "style": "dashed"},
    "param_grad": {"shape": "ellipse", "style": "dashed,filled", "fillcolor": "#ffcf8a"},
}
HIGHLIGHT = {"color": "#d62728", "penwidth": "3", "highlighted": "true"}
FORMATS = ("dot", "svg", "png", "pdf")
_SHORT = {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "float16": "f16", "bool": "bool"}


class GraphvizNotFound(RuntimeError):
    """The Graphviz `dot` program is needed to render and is not on PATH."""


def quote(text) -> str:
    """`text` as a DOT quoted string that Graphviz shows literally (labels process escapes)."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\\\x{ord(ch):02x}")  # shown as \xNN rather than a raw control byte
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _attrs(**kw) -> str:
    # Graphviz decodes HTML entities in labels, so a literal '&' there must be written '&amp;'
    return "[" + ", ".join(f"{k}={quote(v.replace('&', '&amp;') if k == 'label' else v)}"
                           for k, v in kw.items() if v is not None) + "]"


def scope_of(op: Operator) -> str | None:
    """The name scope of an op: its first output's name up to the first '.' (`fc_0.tmp_1` -> `fc_0`)."""
    for name in op.output_names:
        if "." in name:
            return name.split(".", 1)[0]
    return None


def step_scope_of(op: Operator) -> str | None:
    """Like `scope_of`, keeping StaticRNN's step suffix (`fc_0.tmp_1@step3` -> `fc_0@step3`)."""
    scope = scope_of(op)
    if scope is None:
        return None
    step = re.search(r"@step\d+", next(n for n in op.output_names if "." in n))
    return scope + step.group(0) if step else scope


def _var_kind(var: Variable | None, name: str, params: set) -> str:
    if GRAD_SUFFIX in name:  # also derived names such as `w@GRAD@CLIP`
        return "param_grad" if name.split(GRAD_SUFFIX, 1)[0] in params else "grad"
    if isinstance(var, Parameter):
        return "parameter"
    if var is not None and var.is_data:
        return "data"
    if var is not None and var.persistable:
        return "persistable"
    return "var"


def _type_str(var) -> str:
    if var is None or var.shape is None:
        return "?"
    dt = "?" if var.dtype is None else _SHORT.get(np.dtype(var.dtype).name, np.dtype(var.dtype).name)
    return f"{dt}[{','.join(str(d) for d in var.shape)}]"


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
    if collapse is None or collapse is False:
        return None
    if collapse is True or collapse == "scope":
        return scope_of
    if collapse == "step":
        return step_scope_of
    if callable(collapse):
        return collapse
    raise ValueError(f"collapse must be None, True, 'scope', 'step' or a callable op -> group name, got {collapse!r}")


class _Dot:
    """Collects DOT lines and gives every (block, name) a short, always-valid node id."""

    def __init__(self):
        self.lines = []
        self.var_ids: dict[tuple, str] = {}
        self.declared = set()
        self.edges = {}  # (src id, dst id) -> None, in insertion order

    def var_id(self, block_idx, name, version) -> str:
        key = (block_idx, name, version)
        if key not in self.var_ids:
            self.var_ids[key] = f"v{len(self.var_ids)}"
        return self.var_ids[key]


def to_dot(program_or_block, highlights=None, collapse=None, around=None, hops=2, rankdir="TB",
           legend=True) -> str:
    """DOT text for a Program (all blocks) or one Block.

    - `highlights`: Variables, Operators or names to emphasise (a name that is no variable
      matches op types).
    - `collapse`: True (or "scope") folds the ops of each name scope (see `scope_of`) and role into
      one summary node; "step" keeps unrolled RNN steps apart (`step_scope_of`); a callable
      `op -> group name or None` defines the groups. Variables used only inside one group are hidden.
    - `around` (Variables or names) with `hops`: draw only nodes within `hops` edges of them
      (var -> op -> var is two hops).
    """
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
    out.append(f"  edge {_attrs(color='#555555', arrowsize='0.7')};")
    style = dict(hl_ops=hl_ops, hl_types=hl_types, hl_names=hl_names, seeds=seeds, params=params)
    for block in blocks:
        g = versioned_graph(block)
        keep = set(g.nodes)
        if seeds or seed_ops:
            start = [n for n, d in g.nodes(data=True) if d.get("name") in seeds]
            start += [op_node(i) for i, op in enumerate(block.ops) if id(op) in seed_ops]
            keep = neighborhood(g, start, hops) if start else set()
        _draw_block(dot, block, g, keep, _groups(block, keep, group_fn), len(blocks) > 1, style)
    for src, dst in dot.edges:
        out.append(f"  {src} -> {dst};")
    if legend:
        _legend(out)
    out.append("}")
    return "\n".join(out) + "\n"


def _draw_block(dot, block, g, keep, group_of, clustered, style):
    out = dot.lines
    indent = "    " if clustered else "  "
    if clustered:
        out.append(f"  subgraph cluster_block_{block.idx} {{")
        out.append(f"    graph {_attrs(label=f'block {block.idx} (parent {block.parent_idx})', style='dashed')};")

    def lit(op):
        return id(op) in style["hl_ops"] or op.type in style["hl_types"]

    shown = {}  # graph node -> DOT id
    for k, (key, members) in enumerate(_group_members(group_of).items()):
        gid = f"g{block.idx}_{k}"
        ops = [block.ops[i] for i in members]
        types = ", ".join(dict.fromkeys(op.type for op in ops))
        attrs = dict(shape="box3d", style="filled", fillcolor=ROLE_COLORS.get(key[1], "#ffffff"),
                     label=f"{key[0]}\n{len(ops)} ops: {types}", kind="group", role=key[1], group=key[0],
                     ops=str(len(ops)))
        out.append(f"{indent}{gid} {_attrs(**attrs, **(HIGHLIGHT if any(map(lit, ops)) else {}))};")
        shown.update((op_node(i), gid) for i in members)
    for i, op in enumerate(block.ops):
        node = op_node(i)
        if node in keep and node not in shown:
            shown[node] = f"op{block.idx}_{i}"
            fill = TYPE_COLORS.get(op.type) or ROLE_COLORS.get(op.role, "#ffffff")
            attrs = dict(shape="box", style="rounded,filled", fillcolor=fill,
                         label=op.type, kind="op", role=op.role, optype=op.type, index=str(i))
            out.append(f"{indent}{shown[node]} {_attrs(**attrs, **(HIGHLIGHT if lit(op) else {}))};")
    pinned = style["hl_names"] | style["seeds"]
    for node, data in g.nodes(data=True):
        if data["kind"] != "var" or node not in keep:
            continue
        name, version = node
        var = block._find_var(name)
        kind = _var_kind(var, name, style["params"])
        if _hidden(g, node, group_of, kind, pinned):
            continue
        owner = var.block.idx if var is not None else block.idx
        shown[node] = vid = dot.var_id(owner, name, version)
        if vid in dot.declared:
            continue  # a parent-block variable already drawn
        dot.declared.add(vid)
        label = f"{name}{f' (v{version + 1})' if version else ''}\n{_type_str(var)}"
        attrs = dict(VAR_STYLES[kind], label=label, kind="var", var_kind=kind, varname=name, version=str(version))
        out.append(f"{indent}{vid} {_attrs(**attrs, **(HIGHLIGHT if name in pinned else {}))};")
    if clustered:
        out.append("  }")
    for src, dst in g.edges:
        if src in shown and dst in shown and shown[src] != shown[dst]:
            dot.edges.setdefault((shown[src], shown[dst]))


def _check_known(blocks, names, what, allow_op_types):
    types = {op.type for b in blocks for op in b.ops}
    for n in names:
        if not any(b._find_var(n) is not None for b in blocks) and not (allow_op_types and n in types):
            raise ValueError(f"{what}: {n!r} is no variable{' or op type' if allow_op_types else ''} of the program")


def _groups(block, keep, group_fn) -> dict:
    """Op index -> (group name, role) for ops folded into a summary node (groups of 2+ ops)."""
    if group_fn is None:
        return {}
    raw = {}
    for i, op in enumerate(block.ops):
        if op_node(i) not in keep:
            continue
        name = group_fn(op)
        if name is not None:
            raw[i] = (str(name), op.role)  # roles stay apart so colours keep their meaning
    sizes = {}
    for key in raw.values():
        sizes[key] = sizes.get(key, 0) + 1
    return {i: key for i, key in raw.items() if sizes[key] > 1}


def _group_members(group_of) -> dict:
    members = {}
    for i, key in group_of.items():
        members.setdefault(key, []).append(i)
    return members


def _hidden(g, name, group_of, kind, pinned) -> bool:
    """A plain variable is hidden when every op touching it lies in one summary node."""
    if not group_of or kind in ("parameter", "data", "persistable") or name[0] in pinned:
        return False
    keys = {group_of.get(n[1]) for n in list(g.predecessors(name)) + list(g.successors(name))}
    return len(keys) == 1 and None not in keys


def _legend(out):
    out.append("  subgraph cluster_legend {")
    out.append(f"    graph {_attrs(label='legend', style='rounded', color='#999999', fontsize='10')};")
    prev = None
    for role in ROLES:
        nid = f"legend_{role}"
        out.append(f"    {nid} {_attrs(shape='box', style='rounded,filled', fillcolor=ROLE_COLORS[role], label=f'{role} op', kind='legend', role=role)};")
        if prev:  # invisible edges keep the legend in a tidy column
            out.append(f"    {prev} -> {nid} [style=invis];")
        prev = nid
    for kind in ("parameter", "param_grad", "grad", "data"):
        nid = f"legend_{kind}"
        label = {"param_grad": "parameter gradient", "grad": "gradient"}.get(kind, kind)
        out.append(f"    {nid} {_attrs(**VAR_STYLES[kind], label=label, kind='legend')};")
        out.append(f"    {prev} -> {nid} [style=invis];")
        prev = nid
    out.append("  }")


def _dot_path(path: str, fmt: str) -> str:
    return path if fmt == "dot" else os.path.splitext(path)[0] + ".dot"


def draw(program_or_block, path, **options) -> str:
    """Write `path` (.dot, .svg, .png or .pdf); the .dot text is always written next to it.

    Rendering needs the Graphviz `dot` program; without it `GraphvizNotFound` is raised
    (after the .dot file is written). `options` go to `to_dot`. Returns `path`."""
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"draw: cannot tell the format of {path!r}; use one of " + ", ".join("." + f for f in FORMATS))
    text = to_dot(program_or_block, **options)
    dot_path = _dot_path(path, fmt)
    with open(dot_path, "w", encoding="utf-8") as f:
        f.write(text)
    if fmt != "dot":
        render(dot_path, path, fmt)
    return path


def render(dot_path: str, out_path: str, fmt: str):
    """Run Graphviz `dot -T<fmt>`; raises GraphvizNotFound or RuntimeError with dot's message."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFound(
            f"rendering {out_path!r} needs the Graphviz 'dot' program, which is not on PATH "
            f"(install it: 'apt-get install graphviz' on Debian/Ubuntu, 'brew install graphviz' on macOS, "
            f"or see https://graphviz.org/download/); the DOT text was written to {dot_path!r}")
    res = subprocess.run([exe, f"-T{fmt}", dot_path, "-o", out_path], capture_output=True, text=True)
    if res.returncode != 0:
        msg = re.sub(r"\s+", " ", res.stderr).strip()
        raise RuntimeError(f"Graphviz 'dot' failed rendering {dot_path!r} to {fmt}: {msg}")
