import networkx as nx
import pytest

import fluidlite as fl
from fluidlite import graph, layers


def _net():
    x = layers.data(name="x", shape=[6])
    h = layers.fc(x, size=4, act="tanh", bias_attr=False)
    out = layers.fc([x, h], size=3, bias_attr=False)
    loss = layers.mean(out)
    return x, h, loss


def test_to_networkx_nodes_and_attributes():
    x, h, loss = _net()
    block = fl.default_main_program().global_block()
    g = graph.to_networkx(block)
    ops = [n for n, d in g.nodes(data=True) if d["kind"] == "op"]
    var_nodes = [n for n, d in g.nodes(data=True) if d["kind"] == "var"]
    assert all(d["kind"] in ("op", "var") for _, d in g.nodes(data=True))
    assert len(ops) == len(block.ops)
    assert sorted(var_nodes) == sorted(block.vars)
    for i, op in enumerate(block.ops):
        d = g.nodes[graph.op_node(i)]
        assert (d["type"], d["role"], d["index"], d["attrs"]) == (op.type, op.role, i, op.attrs)
        # edges mirror the op's slots exactly (an independent recount)
        assert {u for u, _ in g.in_edges(graph.op_node(i))} == set(op.input_names)
        assert {v for _, v in g.out_edges(graph.op_node(i))} == set(op.output_names)
    w = block.all_parameters()[0]
    assert g.nodes[w.name]["is_parameter"] and g.nodes[w.name]["persistable"]
    assert g.nodes[w.name]["shape"] == (6, 4) and g.nodes[w.name]["dtype"] == "float32"
    assert not g.nodes["x"]["is_parameter"] and g.nodes["x"]["shape"] == (-1, 6)
    assert nx.is_bipartite(g)
    # x feeds two mul ops; loss has exactly one producer and no consumer
    assert g.out_degree("x") == 2 and g.in_degree(loss.name) == 1 and g.out_degree(loss.name) == 0
    assert nx.has_path(g, "x", loss.name) and not nx.has_path(g, loss.name, "x")


def test_program_means_global_block_and_type_errors():
    _net()
    g = graph.to_networkx(fl.default_main_program())
    assert g.graph["block"] == 0
    with pytest.raises(TypeError, match="Block or a Program"):
        graph.to_networkx("nope")


def test_repeated_inputs_are_listed_per_use():
    x = layers.data(name="x", shape=[3])
    block = fl.default_main_program().global_block()
    block.append_op("sum", {"X": [x, x]}, {"Out": "twice"})
    w = block.create_var("w", shape=[3, 3], persistable=True)
    block.append_op("mul", {"X": w, "Y": w}, {"Out": "ww"})
    g = graph.to_networkx(block)
    assert g.edges["x", graph.op_node(0)]["slots"] == ["X", "X"]
    assert g.edges["w", graph.op_node(1)]["slots"] == ["X", "Y"]


def test_op_graph_and_topological_order():
    _net()
    block = fl.default_main_program().global_block()
    og = graph.op_graph(block)
    assert sorted(og.nodes) == list(range(len(block.ops)))
    assert not graph.has_cycle(og) and graph.find_cycle(og) == []
    order = graph.topological_order(block)
    assert order == list(range(len(block.ops)))  # program order is already topological
    # every data edge goes from the writer to a later reader of one of its outputs
    for u, v, d in og.edges(data=True):
        assert u < v
        if d["dep"] == "data":
            assert set(block.ops[u].output_names) & set(block.ops[v].input_names)


def test_op_graph_in_place_write_stays_acyclic():
    x = layers.data(name="x", shape=[3])
    block = fl.default_main_program().global_block()
    block.append_op("tanh", {"X": x}, {"Out": "h"})
    block.append_op("mean", {"X": "h"}, {"Out": "m1"})           # reads h
    block.append_op("scale", {"X": "h"}, {"Out": "h"}, {"scale": 2.0})  # overwrites h in place
    block.append_op("mean", {"X": "h"}, {"Out": "m2"})           # reads the scaled h
    og = graph.op_graph(block)
    assert og.edges[0, 2]["dep"] == "data" and og.edges[1, 2]["dep"] == "anti"
    assert og.edges[2, 3]["dep"] == "data" and not og.has_edge(0, 3)  # m2 reads the new h, not op 0's
    assert not graph.has_cycle(og)
    # the bipartite graph does have the var -> op -> var loop of the in-place op
    assert graph.has_cycle(graph.to_networkx(block))
    assert graph.producers(block, "h") == [0, 2] and graph.consumers(block, "h") == [1, 2, 3]


def test_has_cycle_on_plain_graphs():
    assert graph.has_cycle(nx.DiGraph([(1, 2), (2, 1)]))
    assert not graph.has_cycle(nx.DiGraph([(1, 2), (2, 3)]))
    assert len(graph.find_cycle(nx.DiGraph([(1, 2), (2, 3), (3, 1)]))) == 3


def test_neighborhood_counts_edges():
    x, h, loss = _net()
    g = graph.to_networkx(fl.default_main_program().global_block())
    assert graph.neighborhood(g, [loss.name], 0) == {loss.name}
    near = graph.neighborhood(g, [loss.name], 2)
    assert len(near) == 3 and loss.name in near  # loss <- mean <- its input
    assert graph.neighborhood(g, [loss.name], 100) == set(g.nodes)
    with pytest.raises(ValueError, match="hops"):
        graph.neighborhood(g, [loss.name], -1)
    with pytest.raises(ValueError, match="nope"):
        graph.neighborhood(g, ["nope"], 1)


def test_versioned_graph_splits_rewritten_vars():
    x = layers.data(name="x", shape=[3])
    block = fl.default_main_program().global_block()
    block.append_op("tanh", {"X": x}, {"Out": "h"})
    block.append_op("scale", {"X": "h"}, {"Out": "h"}, {"scale": 2.0})
    block.append_op("mean", {"X": "h"}, {"Out": "m"})
    g = graph.versioned_graph(block)
    assert not graph.has_cycle(g)
    assert list(g.predecessors(("h", 0))) == [graph.op_node(0)]
    assert list(g.successors(("h", 0))) == [graph.op_node(1)]
    assert list(g.predecessors(("h", 1))) == [graph.op_node(1)]
    assert list(g.successors(("h", 1))) == [graph.op_node(2)]
    assert g.nodes[("h", 1)]["name"] == "h" and g.nodes[("h", 1)]["version"] == 1
    assert ("x", 1) not in g and ("m", 0) in g
