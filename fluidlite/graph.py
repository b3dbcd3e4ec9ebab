"""A block as a networkx graph, plus small graph helpers built on networkx algorithms.

`to_networkx(block)` gives a bipartite DiGraph: variable nodes are keyed by their name (str),
op nodes by `("op", index)` where `index` is the op's position in `block.ops`. Edges run
var -> op for inputs and op -> var for outputs and carry the slot names in `slots`.
"""
from __future__ import annotations

import networkx as nx

from .framework import Block, Parameter, Program, Variable


def op_node(index: int) -> tuple:
    """The node key of op number `index` in `to_networkx` graphs."""
    return ("op", index)


def _as_block(block) -> Block:
    if isinstance(block, Program):
        return block.global_block()
    if not isinstance(block, Block):
        raise TypeError(f"expected a Block or a Program, got {type(block).__name__}")
    return block


def _var_attrs(var: Variable | None) -> dict:
    if var is None:  # a name an op refers to but no block declares
        return {"kind": "var", "shape": None, "dtype": None, "persistable": False, "is_parameter": False,
                "declared": False}
    return {"kind": "var", "shape": var.shape, "dtype": None if var.dtype is None else var.dtype.name,
            "persistable": var.persistable, "is_parameter": isinstance(var, Parameter),
            "is_data": bool(var.is_data), "stop_gradient": var.stop_gradient, "declared": True,
            "block": var.block.idx}


def to_networkx(block) -> nx.DiGraph:
    """Op and variable nodes of `block` (a Program means its global block); every node has `kind`.

    Op nodes: `type role attrs index`. Var nodes: `shape dtype persistable is_parameter` (and more).
    Variables of parent blocks that the ops use are included."""
    block = _as_block(block)
    g = nx.DiGraph(block=block.idx)
    for name, var in block.vars.items():
        g.add_node(name, **_var_attrs(var))
    for i, op in enumerate(block.ops):
        node = op_node(i)
        g.add_node(node, kind="op", type=op.type, role=op.role, attrs=dict(op.attrs), index=i)
        for direction, slots in (("in", op.inputs), ("out", op.outputs)):
            for slot, names in slots.items():
                for name in names:
                    if name not in g:
                        g.add_node(name, **_var_attrs(block._find_var(name)))
                    _add_slot_edge(g, *((name, node) if direction == "in" else (node, name)), slot)
    return g


def versioned_graph(block) -> nx.DiGraph:
    """Like `to_networkx`, but var nodes are `(name, version)`: a variable written again after it
    was read or written (an in-place update, e.g. by an optimizer) gets a new node, so the graph
    follows program order and has no var -> op -> var loops. Var nodes also carry `name`, `version`."""
    block = _as_block(block)
    g = nx.DiGraph(block=block.idx)
    version: dict[str, int] = {}

    def current(name):
        key = (name, version.setdefault(name, 0))
        if key not in g:
            g.add_node(key, **_var_attrs(block._find_var(name)), name=name, version=key[1])
        return key

    for name in block.vars:
        current(name)
    for i, op in enumerate(block.ops):
        node = op_node(i)
        g.add_node(node, kind="op", type=op.type, role=op.role, attrs=dict(op.attrs), index=i)
        for slot, names in op.inputs.items():
            for name in names:
                _add_slot_edge(g, current(name), node, slot)
        for slot, names in op.outputs.items():
            for name in names:
                if g.degree(current(name)):
                    version[name] += 1
                _add_slot_edge(g, node, current(name), slot)
    return g


def _add_slot_edge(g, src, dst, slot):
    if g.has_edge(src, dst):
        g.edges[src, dst]["slots"].append(slot)
    else:
        g.add_edge(src, dst, slots=[slot])


def op_graph(block) -> nx.DiGraph:
    """Op-to-op dependencies of `block`, keyed by op index, respecting program order.

    Each edge has `dep`: "data" (reads what the other wrote), "anti" (overwrites what the other
    read) or "output" (overwrites what the other wrote). Because in-place ops (e.g. error clipping)
    write a variable they read, dependencies follow the last write before each op; edges therefore
    always point forward and the graph of a well-formed block is acyclic."""
    block = _as_block(block)
    g = nx.DiGraph(block=block.idx)
    last_write: dict[str, int] = {}
    reads_since_write: dict[str, list] = {}
    for i, op in enumerate(block.ops):
        g.add_node(i, type=op.type, role=op.role)
        for name in dict.fromkeys(op.input_names):
            if name in last_write:
                _add_dep(g, last_write[name], i, "data")
            reads_since_write.setdefault(name, []).append(i)
        for name in dict.fromkeys(op.output_names):
            for reader in reads_since_write.get(name, []):
                if reader != i:
                    _add_dep(g, reader, i, "anti")
            if name in last_write and last_write[name] != i:
                _add_dep(g, last_write[name], i, "output")
            last_write[name] = i
            reads_since_write[name] = []
    return g


def _add_dep(g, src, dst, dep):
    if not g.has_edge(src, dst):  # a data dependency is the strongest; keep the first kind found
        g.add_edge(src, dst, dep=dep)


def has_cycle(graph: nx.DiGraph) -> bool:
    """True if the directed graph has a cycle."""
    return not nx.is_directed_acyclic_graph(graph)


def find_cycle(graph: nx.DiGraph) -> list:
    """The edges of one cycle, or [] if there is none."""
    try:
        return list(nx.find_cycle(graph))
    except nx.NetworkXNoCycle:
        return []


def topological_order(block) -> list:
    """Op indices in a dependency-respecting order, ties broken by program order."""
    g = op_graph(block)
    try:
        return list(nx.lexicographical_topological_sort(g))
    except nx.NetworkXUnfeasible:
        raise ValueError(f"block {_as_block(block).idx}: op dependencies form a cycle: {find_cycle(g)}") from None


def producers(block, name: str) -> list:
    """Indices of the ops that write variable `name`."""
    return [i for i, op in enumerate(_as_block(block).ops) if name in op.output_names]


def consumers(block, name: str) -> list:
    """Indices of the ops that read variable `name`."""
    return [i for i, op in enumerate(_as_block(block).ops) if name in op.input_names]


def neighborhood(graph: nx.DiGraph, seeds, hops: int) -> set:
    """Nodes within `hops` edges (either direction) of any seed node of a `to_networkx` graph."""
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 0:
        raise ValueError(f"hops must be an int >= 0, got {hops!r}")
    keep = set()
    for seed in seeds:
        if seed not in graph:
            raise ValueError(f"{seed!r} is not a node of the graph")
        keep.update(nx.single_source_shortest_path_length(graph.to_undirected(as_view=True), seed, cutoff=hops))
    return keep

