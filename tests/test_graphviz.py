import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

import fluidlite as fl
from fluidlite import graphviz, layers
from fluidlite.framework import ROLES

HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz 'dot' is not installed")

NASTY = ['x "quoted"', "a b\\c", "w@GRAD", "ends\\", "<b>&amp;</b>", "semi;colon{}[]", "ünïcødé", "-> edge", "\\N\\G"]


def parse_dot(text):
    """node id -> attrs, and the edge list, read with a small independent DOT reader."""
    nodes, edges = {}, []
    for line in text.splitlines():
        m = re.match(r"\s*(\w+) -> (\w+)", line)
        if m:
            if "invis" not in line:
                edges.append((m.group(1), m.group(2)))
            continue
        m = re.match(r"\s*(\w+) \[(.*)\];$", line)
        if m and m.group(1) not in ("graph", "node", "edge"):
            attrs = {k: re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), v)
                     for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2))}
            nodes[m.group(1)] = attrs
    return nodes, edges


def of_kind(nodes, kind):
    return {k: v for k, v in nodes.items() if v.get("kind") == kind}


def _mlp(depth=3, width=4):
    x = layers.data(name="x", shape=[5])
    h = x
    for _ in range(depth):
        h = layers.fc(h, size=width, act="tanh", bias_attr=False)
    return x, h, layers.mean(h)


def _all_roles_program():
    """A forward net plus one hand-made op of every other role (no backward builder needed)."""
    x, h, loss = _mlp(depth=1)
    block = fl.default_main_program().global_block()
    w = block.all_parameters()[0]
    block.append_op("fill_constant", {}, {"Out": "w_grad_src"}, {"shape": list(w.shape), "value": 1.0},
                    role="backward")
    block.append_op("scale", {"X": "w_grad_src"}, {"Out": fl.grad_var_name(w.name)}, {"scale": 1.0}, role="backward")
    block.append_op("scale", {"X": h}, {"Out": fl.grad_var_name(h.name)}, {"scale": 0.5}, role="error_clip")
    block.append_op("scale", {"X": fl.grad_var_name(w.name)}, {"Out": "w_clipped"}, {"scale": 0.1}, role="grad_clip")
    block.append_op("sum", {"X": [w, "w_clipped"]}, {"Out": w}, role="optimize")
    return block


def test_dot_lists_every_op_and_var_with_edges():
    x, h, loss = _mlp(depth=2)
    block = fl.default_main_program().global_block()
    nodes, edges = parse_dot(graphviz.to_dot(fl.default_main_program()))
    ops, var_nodes = of_kind(nodes, "op"), of_kind(nodes, "var")
    assert sorted(a["optype"] for a in ops.values()) == sorted(op.type for op in block.ops)
    assert sorted(a["varname"] for a in var_nodes.values()) == sorted(block.vars)
    expected_edges = sum(len(set(op.input_names)) + len(set(op.output_names)) for op in block.ops)
    assert len(edges) == expected_edges
    name_of = {k: a["varname"] for k, a in var_nodes.items()}
    for k, a in ops.items():
        op = block.ops[int(a["index"])]
        assert {name_of[u] for u, v in edges if v == k} == set(op.input_names)
        assert {name_of[v] for u, v in edges if u == k} == set(op.output_names)
    x_node = next(a for a in var_nodes.values() if a["varname"] == "x")
    assert x_node["label"] == "x\nf32[-1,5]" and x_node["var_kind"] == "data"


def test_roles_are_coloured_distinctly_with_a_legend():
    block = _all_roles_program()
    nodes, _ = parse_dot(graphviz.to_dot(block, collapse=None))  # every op, the optimizer's too
    ops = of_kind(nodes, "op")
    assert {a["role"] for a in ops.values()} == set(ROLES)
    for a in ops.values():
        assert a["role"] == block.ops[int(a["index"])].role
        assert a["fillcolor"] == graphviz.ROLE_COLORS[a["role"]]
    assert len(set(graphviz.ROLE_COLORS.values())) == len(ROLES)
    legend = of_kind(nodes, "legend")
    assert {a["role"]: a["fillcolor"] for a in legend.values() if "role" in a} == graphviz.ROLE_COLORS
    assert "legend" not in str(of_kind(parse_dot(graphviz.to_dot(block, legend=False))[0], "legend"))


def test_parameters_and_gradients_are_marked():
    block = _all_roles_program()
    w = block.all_parameters()[0]
    nodes, _ = parse_dot(graphviz.to_dot(block))
    kinds = {a["varname"]: a["var_kind"] for a in of_kind(nodes, "var").values()}
    assert kinds[w.name] == "parameter" and kinds[w.name + "@GRAD"] == "param_grad"
    h_grad = next(n for n in kinds if n.endswith("@GRAD") and n != w.name + "@GRAD")
    assert kinds[h_grad] == "grad" and kinds["x"] == "data" and kinds["w_clipped"] == "var"
    styles = {k: graphviz.VAR_STYLES[k]["shape"] + graphviz.VAR_STYLES[k]["style"] for k in kinds.values()}
    assert len(set(styles.values())) == len(styles)  # each kind looks different


def test_with_real_backward_ops_when_available():
    append_backward = getattr(fl, "append_backward", None)
    if append_backward is None:
        pytest.skip("backward builder not available")
    x, h, loss = _mlp(depth=2)
    pairs = append_backward(loss)
    nodes, _ = parse_dot(graphviz.to_dot(fl.default_main_program()))
    assert {a["role"] for a in of_kind(nodes, "op").values()} >= {"forward", "backward"}
    kinds = {a["varname"]: a["var_kind"] for a in of_kind(nodes, "var").values()}
    for p, g in pairs:
        assert kinds[p.name] == "parameter" and kinds[g.name] == "param_grad"


def test_highlights_by_variable_op_and_name():
    x, h, loss = _mlp(depth=2)
    block = fl.default_main_program().global_block()
    nodes, _ = parse_dot(graphviz.to_dot(block, highlights=[loss, block.ops[0], "x", "tanh"]))
    lit = {a.get("varname") or a.get("optype") + a["index"] for a in nodes.values() if a.get("highlighted")}
    tanh_ops = {f"tanh{i}" for i, op in enumerate(block.ops) if op.type == "tanh"}
    assert lit == {loss.name, "x", "mul0"} | tanh_ops
    assert all(a["color"] == graphviz.HIGHLIGHT["color"] for a in nodes.values() if a.get("highlighted"))
    nodes, _ = parse_dot(graphviz.to_dot(block, highlights=loss))  # a single item works too
    assert [a["varname"] for a in nodes.values() if a.get("highlighted")] == [loss.name]
    with pytest.raises(ValueError, match="nope"):
        graphviz.to_dot(block, highlights=["nope"])
    with pytest.raises(TypeError, match="highlights"):
        graphviz.to_dot(block, highlights=[3])


def test_collapse_by_name_scope_reduces_nodes():
    x, h, loss = _mlp(depth=6)
    program = fl.default_main_program()
    full, _ = parse_dot(graphviz.to_dot(program))
    folded, edges = parse_dot(graphviz.to_dot(program, collapse=True))
    groups = of_kind(folded, "group")
    assert sorted(a["group"] for a in groups.values()) == [f"fc_{i}" for i in range(6)]
    assert all(a["ops"] == "2" and a["label"].endswith("2 ops: mul, tanh") for a in groups.values())
    assert [a["optype"] for a in of_kind(folded, "op").values()] == ["mean"]
    # inside each fc only mul's output is private; params, x and the layer outputs stay
    hidden = {a["varname"] for a in of_kind(full, "var").values()} - {a["varname"] for a in of_kind(folded, "var").values()}
    assert hidden == {f"fc_{i}.tmp_0" for i in range(6)}
    assert len(folded) < len(full) and len(edges) > 0


def test_collapse_with_callable_and_roles_kept_apart():
    block = _all_roles_program()
    nodes, _ = parse_dot(graphviz.to_dot(block, collapse=lambda op: "all"))
    groups = of_kind(nodes, "group")
    # roles are never mixed in one summary node; single-op groups stay plain ops
    by_role = {a["role"]: int(a["ops"]) for a in groups.values()}
    counts = {r: sum(op.role == r for op in block.ops) for r in ROLES}
    assert by_role == {r: n for r, n in counts.items() if n > 1}
    assert {a["role"] for a in of_kind(nodes, "op").values()} == {r for r, n in counts.items() if n == 1}
    with pytest.raises(ValueError, match="collapse"):
        graphviz.to_dot(block, collapse="weird")


def test_around_keeps_only_k_hops():
    x, h, loss = _mlp(depth=4)
    program = fl.default_main_program()
    block = program.global_block()
    full, _ = parse_dot(graphviz.to_dot(program))
    near, edges = parse_dot(graphviz.to_dot(program, around=[loss], hops=2))
    mean_op = block.ops[-1]
    assert {a.get("varname") or a["optype"] for k, a in near.items() if a.get("kind") in ("op", "var")} == \
        {loss.name, "mean", mean_op.input("X")[0]}
    assert len(edges) == 2
    wider, _ = parse_dot(graphviz.to_dot(program, around=[loss.name], hops=4))
    n_full = len(of_kind(full, "op")) + len(of_kind(full, "var"))
    n_wide = len(of_kind(wider, "op")) + len(of_kind(wider, "var"))
    assert 3 < n_wide < n_full
    assert of_kind(wider, "var")  # the seed is highlighted
    assert [a["varname"] for a in wider.values() if a.get("highlighted")] == [loss.name]
    both, _ = parse_dot(graphviz.to_dot(program, around=[loss], hops=100, collapse=True))
    assert len(of_kind(both, "group")) == 4
    with pytest.raises(ValueError, match="hops"):
        graphviz.to_dot(program, around=[loss], hops=-1)
    with pytest.raises(ValueError, match="ghost"):
        graphviz.to_dot(program, around=["ghost"])


def test_quote_escapes():
    assert graphviz.quote('a"b') == '"a\\"b"'
    assert graphviz.quote("a\\") == '"a\\\\"'
    assert graphviz.quote("l1\nl2") == '"l1\\nl2"'
    assert "\x01" not in graphviz.quote("bell\x01")


def _nasty_program():
    block = fl.default_main_program().global_block()
    prev = layers.data(name=NASTY[0], shape=[3])
    for name in NASTY[1:]:
        block.append_op("scale", {"X": prev}, {"Out": name}, {"scale": 2.0})
        prev = block.var(name)
    block.append_op("tanh", {"X": prev}, {"Out": "ctl\x07 and\nnewline"})
    return block


@needs_dot
def test_nasty_names_render_literally():
    block = _nasty_program()
    text = graphviz.to_dot(block, highlights=["w@GRAD"])
    res = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True)
    assert res.returncode == 0, res.stderr.decode()
    assert res.stderr.decode().strip() == ""  # not even a warning
    svg = ET.fromstring(res.stdout)
    texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    for name in NASTY:
        assert name in texts, name
    # graphviz's own parser sees exactly our nodes and edges
    res = subprocess.run(["dot", "-Tjson"], input=text.encode(), capture_output=True)
    parsed = json.loads(res.stdout)
    ours, edges = parse_dot(text)
    assert sum(1 for o in parsed["objects"] if "nodes" not in o) == len(ours)
    assert len([e for e in parsed["edges"] if e.get("style") != "invis"]) == len(edges)


@needs_dot
@pytest.mark.parametrize("fmt", ["svg", "png", "pdf"])
def test_draw_renders_and_keeps_dot(tmp_path, fmt):
    _mlp(depth=1)
    out = tmp_path / f"net.{fmt}"
    assert graphviz.draw(fl.default_main_program(), out) == str(out)
    magic = {"svg": b"<?xml", "png": b"\x89PNG", "pdf": b"%PDF"}[fmt]
    assert out.read_bytes().startswith(magic)
    assert (tmp_path / "net.dot").read_text().startswith("digraph")


def test_draw_dot_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setattr(graphviz.shutil, "which", lambda name: None)
    _mlp(depth=1)
    path = graphviz.draw(fl.default_main_program(), tmp_path / "g.dot", collapse=True)
    assert open(path).read() == graphviz.to_dot(fl.default_main_program(), collapse=True)
    with pytest.raises(graphviz.GraphvizNotFound, match="apt-get install graphviz") as info:
        graphviz.draw(fl.default_main_program(), tmp_path / "g.svg")
    assert isinstance(info.value, RuntimeError)
    assert os.path.exists(tmp_path / "g.dot") and not os.path.exists(tmp_path / "g.svg")


def test_draw_rejects_unknown_format(tmp_path):
    _mlp(depth=1)
    with pytest.raises(ValueError, match=r"\.svg"):
        graphviz.draw(fl.default_main_program(), tmp_path / "g.jpeg")
    with pytest.raises(TypeError, match="Program or a Block"):
        graphviz.to_dot(42)


def test_sub_blocks_are_clusters_sharing_parent_vars():
    x, h, loss = _mlp(depth=1)
    program = fl.default_main_program()
    sub = program._create_block()
    sub.append_op("scale", {"X": h}, {"Out": "inner"}, {"scale": 3.0})
    program._rollback()
    text = graphviz.to_dot(program)
    assert "subgraph cluster_block_0" in text and "subgraph cluster_block_1" in text
    nodes, edges = parse_dot(text)
    h_nodes = [k for k, a in nodes.items() if a.get("varname") == h.name]
    assert len(h_nodes) == 1  # the parent's variable is drawn once, used from both blocks
    assert sum(1 for u, v in edges if u == h_nodes[0]) == 2


def test_in_place_updates_get_a_new_node_so_the_drawing_is_acyclic():
    import networkx as nx

    block = _all_roles_program()  # ends with an in-place update of the weight
    w = block.all_parameters()[0]
    nodes, edges = parse_dot(graphviz.to_dot(block, collapse=None))
    w_nodes = {a["version"]: k for k, a in of_kind(nodes, "var").items() if a["varname"] == w.name}
    assert sorted(w_nodes) == ["0", "1"]
    assert "(v2)" in nodes[w_nodes["1"]]["label"]
    update = next(k for k, a in of_kind(nodes, "op").items() if a["role"] == "optimize")
    assert (w_nodes["0"], update) in edges and (update, w_nodes["1"]) in edges
    assert nx.is_directed_acyclic_graph(nx.DiGraph(edges))


def test_collapse_unrolled_rnn():
    if not hasattr(layers, "StaticRNN"):
        pytest.skip("StaticRNN not available")
    steps = 30
    x = layers.data(name="x", shape=[steps, -1, 3], append_batch_size=False)
    rnn = layers.StaticRNN()
    with rnn.step():
        x_t = rnn.step_input(x)
        h_prev = rnn.memory(shape=[-1, 4], batch_ref=x_t)
        h = layers.fc([x_t, h_prev], size=4, act="tanh", bias_attr=False)
        rnn.update_memory(h_prev, h)
        rnn.step_output(h)
    layers.mean(rnn())
    program = fl.default_main_program()
    n_ops = len(program.global_block().ops)
    full, _ = parse_dot(graphviz.to_dot(program, collapse=None, max_nodes=None))
    by_scope, _ = parse_dot(graphviz.to_dot(program, collapse=True))
    by_step, _ = parse_dot(graphviz.to_dot(program, collapse="step"))
    fc_groups = [a for a in of_kind(by_scope, "group").values() if a["group"] == "fc_0"]
    fc_ops = sum(op.output_names[0].startswith("fc_0.") for op in program.global_block().ops)
    assert fc_ops >= 3 * steps  # per step: the recurrent product, the sum, tanh (the input product is hoisted)
    assert len(fc_groups) == 1 and int(fc_groups[0]["ops"]) == fc_ops
    step_groups = {a["group"] for a in of_kind(by_step, "group").values() if a["group"].startswith("fc_0")}
    assert step_groups == {f"fc_0@step{i}" for i in range(steps)}
    assert len(by_scope) < len(by_step) < len(full) and len(of_kind(full, "op")) == n_ops
