"""DOT text of one block for `graphviz.to_dot`: node styles, labels, folding applied, the legend.

Ops are boxes filled by role (`ROLE_COLORS`); variables are ellipses labelled `name` and
`dtype[shape]`; parameters are cylinders, gradients dashed. Each node carries machine-readable
attributes (`kind`, `role`, `optype`, `var_kind`, and for folded steps `folded`, `steps`) that
Graphviz ignores but tools and tests can read.
"""
from __future__ import annotations

import re

import numpy as np

from .framework import ROLES, Operator, Parameter, Variable
from .graph import op_node
from .graph_fold import fold_block, step_range
from .registry import GRAD_SUFFIX

TYPE_COLORS = {"allreduce": "#7fd1d9"}  # op types with a colour of their own, whatever their role
ROLE_COLORS = {
    "forward": "#cfe2ff",
    "backward": "#f8c4c8",
    "error_clip": "#ffd966",
    "grad_clip": "#d7b8ff",
    "optimize": "#b6e3c2",
}
VAR_STYLES = {  # var_kind -> DOT attributes
    "var": {"shape": "ellipse", "style": "solid"},
    "data": {"shape": "invhouse", "style": "filled", "fillcolor": "#eeeeee"},
    "persistable": {"shape": "cylinder", "style": "filled", "fillcolor": "#f2f2f2"},
    "parameter": {"shape": "cylinder", "style": "filled", "fillcolor": "#ffe9a8"},
    "grad": {"shape": "ellipse", "style": "dashed"},
    "param_grad": {"shape": "ellipse", "style": "dashed,filled", "fillcolor": "#ffcf8a"},
}
HIGHLIGHT = {"color": "#d62728", "penwidth": "3", "highlighted": "true"}
CARRY = {"color": "#1f5fbf", "fontcolor": "#1f5fbf", "penwidth": "2", "constraint": "false", "carry": "true"}
_SHORT = {"float32": "f32", "float64": "f64", "int64": "i64", "int32": "i32", "float16": "f16", "bool": "bool"}


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


class _Dot:
    """Collects DOT lines and gives every (block, name) a short, always-valid node id."""

    def __init__(self):
        self.lines = []
        self.var_ids: dict[tuple, str] = {}
        self.declared = set()
        self.edges = {}  # (src id, dst id) -> marks {("carry", offset) or ("step", t)}, in insertion order
        self.n_nodes = 0
        self.n_steps = 0

    def var_id(self, block_idx, name, version) -> str:
        key = (block_idx, name, version)
        if key not in self.var_ids:
            self.var_ids[key] = f"v{len(self.var_ids)}"
        return self.var_ids[key]


def _draw_block(dot, block, g, keep, group_of, clustered, style):
    indent = "    " if clustered else "  "
    fold = fold_block(block, g, keep) if style["fold"] else None
    if fold is not None:  # scope groups (if any) for most ops, one node per optimizer
        group_of = {**group_of, **fold.groups}
        dot.n_steps = max(dot.n_steps, fold.n_steps)
    rep = fold.rep if fold is not None else {}
    decl = {}  # cluster key (None: none) -> node lines

    def declare(node, line):
        decl.setdefault(fold.cluster.get(node) if fold is not None else None, []).append(line)
        dot.n_nodes += 1

    def lit(op):
        return id(op) in style["hl_ops"] or op.type in style["hl_types"]

    shown = {}  # graph node -> DOT id
    for k, (key, members) in enumerate(_group_members(group_of).items()):
        gid = f"g{block.idx}_{k}"
        ops = [block.ops[i] for i in members]
        types = ", ".join(dict.fromkeys(op.type for op in ops))
        label = fold.group_label.get(key) if fold is not None else None
        attrs = dict(shape="box3d", style="filled", fillcolor=ROLE_COLORS.get(key[1], "#ffffff"),
                     label=label or f"{key[0]}\n{len(ops)} ops: {types}", kind="group", role=key[1], group=key[0],
                     ops=str(len(ops)))
        declare(None, f"{indent}{gid} {_attrs(**attrs, **(HIGHLIGHT if any(map(lit, ops)) else {}))};")
        shown.update((op_node(i), gid) for i in members)
    for i, op in enumerate(block.ops):
        node = op_node(i)
        if node not in keep or node in shown:
            continue
        if rep.get(node, node) != node:
            shown[node] = shown[rep[node]]  # a later step's copy: drawn as the first one
            continue
        shown[node] = f"op{block.idx}_{i}"
        fill = TYPE_COLORS.get(op.type) or ROLE_COLORS.get(op.role, "#ffffff")
        attrs = dict(shape="box", style="rounded,filled", fillcolor=fill,
                     label=op.type, kind="op", role=op.role, optype=op.type, index=str(i))
        if node in rep:
            steps = fold.steps_of[node]
            attrs.update(folded=str(len(fold.members[node])), steps=step_range(steps))
            if len(steps) < fold.n_steps:
                attrs["label"] += f"\nt={step_range(steps)}"
        folded_lit = node in rep and any(lit(block.ops[j]) for j in fold.members[node])
        declare(node, f"{indent}{shown[node]} {_attrs(**attrs, **(HIGHLIGHT if lit(op) or folded_lit else {}))};")
    pinned = style["hl_names"] | style["seeds"]
    for node, data in g.nodes(data=True):
        if data["kind"] != "var" or node not in keep or (fold is not None and node in fold.hidden):
            continue
        name, version = node
        var = block._find_var(name)
        kind = _var_kind(var, name, style["params"])
        if _hidden(g, node, group_of, kind, pinned):
            continue
        if rep.get(node, node) != node:
            if rep[node] in shown:
                shown[node] = shown[rep[node]]
            continue
        owner = var.block.idx if var is not None else block.idx
        shown[node] = vid = dot.var_id(owner, name, version)
        if vid in dot.declared:
            continue  # a parent-block variable already drawn
        dot.declared.add(vid)
        label_name = fold.var_label.get(node, name) if fold is not None else name
        label = f"{label_name}{f' (v{version + 1})' if version else ''}\n{_type_str(var)}"
        attrs = dict(VAR_STYLES[kind], label=label, kind="var", var_kind=kind, varname=name, version=str(version))
        declare(node, f"{indent}{vid} {_attrs(**attrs, **(HIGHLIGHT if name in pinned else {}))};")
    out = dot.lines
    if clustered:
        out.append(f"  subgraph cluster_block_{block.idx} {{")
        out.append(f"    graph {_attrs(label=f'block {block.idx} (parent {block.parent_idx})', style='dashed')};")
    out.extend(decl.pop(None, []))
    for key, lines in decl.items():
        label = f"unrolled RNN step ({key}), drawn once for {dot.n_steps} steps t=0..{dot.n_steps - 1}"
        out.append(f"{indent}subgraph cluster_steps_{block.idx}_{key} {{")
        out.append(f"{indent}  graph {_attrs(label=label, style='rounded,filled', fillcolor='#f7f7f7', color='#888888')};")
        out.extend("  " + line for line in lines)
        out.append(f"{indent}}}")
    if clustered:
        out.append("  }")
    for src, dst in g.edges:
        if src in shown and dst in shown and shown[src] != shown[dst]:
            if fold is not None and (src, dst) in fold.dropped:
                continue
            marks = dot.edges.setdefault((shown[src], shown[dst]), set())
            mark = fold.edge_mark(g, src, dst) if fold is not None else None
            if mark is not None:
                marks.add(mark)


def _edge_attrs(marks, n_steps) -> str:
    """DOT attributes of an edge standing for graph edges with these marks."""
    carry = sorted({m[1] for m in marks if m[0] == "carry"})
    if carry:
        return " " + _attrs(label=", ".join(f"t{o:+d}" for o in carry), **CARRY)
    shift = sorted({m[1] for m in marks if m[0] == "shift"})
    if shift:
        return " " + _attrs(label=", ".join(f"t{o:+d}" for o in shift), fontcolor="#777777", shift="true")
    steps = {m[1] for m in marks if m[0] == "step"}
    if steps and len(steps) < n_steps:
        return " " + _attrs(label=f"t={step_range(steps)}", fontsize="9", steps=step_range(steps))
    return ""


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


def _legend(out, carry=False):
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
    if carry:
        text = "blue arrow: state carried between\nsteps (t-1: of the step before)"
        out.append(f"    legend_carry {_attrs(shape='plaintext', label=text, fontcolor=CARRY['color'], kind='legend')};")
        out.append(f"    {prev} -> legend_carry [style=invis];")
    out.append("  }")


