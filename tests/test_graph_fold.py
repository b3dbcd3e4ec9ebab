"""Drawing big programs: unrolled RNN steps drawn once, optimizer state folded, a node budget."""
import shutil
import struct
import time
import warnings

import pytest

import fluidlite as fl
from fluidlite import graphviz, layers
from fluidlite.graph_fold import op_step, step_range

from test_graphviz import of_kind, parse_dot

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")


def _rnn_training(steps, hidden=4, lstm=False, optimizer=None):
    """A StaticRNN (tanh or LSTM) whose last state feeds a readout, trained with a global-norm clip."""
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup), fl.unique_name.guard():
        x = layers.data(name="x", shape=[steps, -1, 3], append_batch_size=False)
        y = layers.data(name="y", shape=[1])
        rnn = layers.StaticRNN()
        with rnn.step():
            x_t = rnn.step_input(x)
            h_prev = rnn.memory(shape=[-1, hidden], batch_ref=x_t)
            if lstm:
                c_prev = rnn.memory(shape=[-1, hidden], batch_ref=x_t)
                h, c = layers.lstm_unit(x_t, h_prev, c_prev)
                rnn.update_memory(c_prev, c)
            else:
                h = layers.fc([x_t, h_prev], size=hidden, act="tanh")
            rnn.update_memory(h_prev, h)
        pred = layers.fc(rnn.step_var(h), size=1)
        loss = layers.mean(layers.square_error_cost(pred, y))
        opt = optimizer or fl.optimizer.SGD(0.1)
        opt.minimize(loss, grad_clip=fl.clip.GradientClipByGlobalNorm(1.0))
    return main, rnn, h, pred


def _drawn_ops(nodes):
    return of_kind(nodes, "op")


def test_rnn_is_drawn_once_whatever_its_length():
    sizes = []
    for steps in (6, 11):
        main, *_ = _rnn_training(steps)
        nodes, edges = parse_dot(graphviz.to_dot(main))
        sizes.append((len(_drawn_ops(nodes)), len(of_kind(nodes, "var")), len(edges)))
        tanh = [a for a in _drawn_ops(nodes).values() if a["optype"] == "tanh"]
        assert len(tanh) == 1 and tanh[0]["folded"] == str(steps) and tanh[0]["steps"] == f"0..{steps - 1}"
        # every op of the program is drawn exactly once: as itself, as a folded step op, or in a group
        n_ops = len(main.global_block().ops)
        counted = sum(int(a.get("folded", 1)) for a in _drawn_ops(nodes).values())
        counted += sum(int(a["ops"]) for a in of_kind(nodes, "group").values())
        assert counted == n_ops
        full, _ = parse_dot(graphviz.to_dot(main, collapse=None, max_nodes=None))
        assert sum(a["optype"] == "tanh" for a in _drawn_ops(full).values()) == steps
    assert sizes[0] == sizes[1]


def test_state_edges_and_boundary_steps_are_marked():
    steps = 7
    main, rnn, h, pred = _rnn_training(steps)
    text = graphviz.to_dot(main)
    nodes, _ = parse_dot(text)
    edges = {}
    for line in text.splitlines():  # edges with their attributes
        if " -> " in line and "invis" not in line:
            u, rest = line.strip().split(" -> ")
            v = rest.split(" ")[0].rstrip(";")
            edges[(u, v)] = dict(parse_dot(f"  x [{rest.split(' ', 1)[1][1:]}")[0].get("x", {})) if "[" in rest else {}
    h0 = rnn.step_var(h, 0).name  # e.g. fc_0.tmp_4@step0
    h_base = h0.replace("@step0", "@step[t]")
    h_node = next(k for k, a in nodes.items() if a.get("label", "").split("\n")[0] == h_base)
    ops = _drawn_ops(nodes)
    # forward recurrence: step t's product reads h of step t-1
    carry_fwd = [(u, v) for (u, v), a in edges.items() if u == h_node and v in ops and a.get("carry") == "true"]
    assert [ops[v]["optype"] for _, v in carry_fwd] == ["mul"]
    assert edges[carry_fwd[0]]["label"] == "t-1" and edges[carry_fwd[0]]["constraint"] == "false"
    # backward recurrence: a backward op of step t writes the gradient of h at step t-1
    h_grad = next(k for k, a in nodes.items() if a.get("label", "").split("\n")[0] == h_base + "@GRAD")
    carry_bwd = [(u, v) for (u, v), a in edges.items() if v == h_grad and a.get("carry") == "true"]
    assert len(carry_bwd) == 1 and ops[carry_bwd[0][0]]["role"] == "backward"
    # the readout reads only the last step's h; the initial state enters at step 0
    readers = [v for u, v in edges if u == h_node and v in ops and "folded" not in ops[v]]
    assert sorted(ops[v]["optype"] for v in readers) == ["mul", "mul_grad"]  # the readout and its gradient
    assert all(edges[(h_node, v)]["label"] == f"t={steps - 1}" for v in readers)
    mem_init = next(k for k, a in nodes.items() if a.get("varname", "").startswith("static_rnn_0.mem_init"))
    assert {edges[(mem_init, v)]["label"] for u, v in edges if u == mem_init} == {"t=0"}
    assert "subgraph cluster_steps_0_forward" in text and "subgraph cluster_steps_0_backward" in text
    assert "legend_carry" in text


def test_lstm_steps_fold_too():
    main, *_ = _rnn_training(5, lstm=True)
    nodes, _ = parse_dot(graphviz.to_dot(main))
    folded = {(a["optype"], a["role"]): int(a["folded"]) for a in _drawn_ops(nodes).values() if "folded" in a}
    assert folded[("lstm_unit", "forward")] == 5 and folded[("lstm_unit_grad", "backward")] == 5
    assert len(_drawn_ops(nodes)) < 40


def test_op_step_rule():
    main, *_ = _rnn_training(4)
    by_type = {}
    for op in main.global_block().ops:
        by_type.setdefault((op.type, op.role), set()).add(op_step(op))
    assert by_type[("unstack", "forward")] == {None}  # touches every step
    assert by_type[("tanh", "forward")] == {0, 1, 2, 3}
    assert by_type[("sgd", "optimize")] == {None}
    assert step_range([3]) == "3" and step_range([0, 1, 2]) == "0..2" and step_range([0, 2]) == "0,2"


def test_optimizer_state_is_folded():
    x = layers.data(name="x", shape=[5])
    loss = layers.mean(layers.fc(layers.fc(x, size=4, act="tanh"), size=1))
    fl.optimizer.Adam(0.01).minimize(loss)
    program = fl.default_main_program()
    params = [p.name for p in program.all_parameters()]
    nodes, _ = parse_dot(graphviz.to_dot(program))
    groups = of_kind(nodes, "group")
    assert len(groups) == 1
    (group,) = groups.values()
    assert group["role"] == "optimize" and group["ops"] == str(len(params))
    assert group["label"].startswith("adam: updates ") and "Moment1" in group["label"]
    shown = [a["varname"] for a in of_kind(nodes, "var").values()]
    assert not any("moment" in n or "pow_acc" in n for n in shown)
    assert all(shown.count(p) == 1 for p in params)  # the updated versions (v2) are not drawn
    full, _ = parse_dot(graphviz.to_dot(program, collapse=None))
    full_vars = [a["varname"] for a in of_kind(full, "var").values()]
    assert sum("moment1" in n for n in full_vars) == 2 * len(params)  # read, then written in place


def _deep_training(depth):
    x = layers.data(name="x", shape=[4])
    h = x
    for _ in range(depth):
        h = layers.fc(h, size=4, act="tanh")
    fl.optimizer.SGD(0.1).minimize(layers.mean(h))
    return fl.default_main_program()


def test_node_budget_folds_or_refuses_with_a_way_out():
    program = _deep_training(20)
    with pytest.raises(graphviz.GraphTooLarge, match="max_nodes=None") as info:
        graphviz.to_dot(program, collapse=None)
    assert isinstance(info.value, ValueError) and "around=" in str(info.value)
    with pytest.warns(UserWarning, match="collapse='scope'"):
        folded = graphviz.to_dot(program)  # auto folds by scope when the steps-only folding is too big
    nodes, _ = parse_dot(folded)
    assert len(of_kind(nodes, "group")) >= 20 and len(nodes) < graphviz.MAX_NODES
    full, _ = parse_dot(graphviz.to_dot(program, collapse=None, max_nodes=None))
    assert len(_drawn_ops(full)) == len(program.global_block().ops)
    with pytest.raises(graphviz.GraphTooLarge):
        graphviz.to_dot(program, collapse=None, max_nodes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graphviz.to_dot(_rnn_training(3)[0])  # small programs: no warning
    with pytest.raises(ValueError, match="max_nodes"):
        graphviz.to_dot(program, max_nodes=0)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@needs_dot
@pytest.mark.parametrize("lstm,steps", [(True, 20), (False, 100)])
def test_big_rnn_programs_render_quickly_and_readably(tmp_path, lstm, steps):
    main, *_ = _rnn_training(steps, hidden=32, lstm=lstm)
    assert len(main.global_block().ops) > 140  # 148 for the LSTM (one sum_grad per step, not two scale copies)
    t0 = time.perf_counter()
    graphviz.draw(main, tmp_path / "g.png", timeout=60)
    seconds = time.perf_counter() - t0
    width, height = _png_size(tmp_path / "g.png")
    assert seconds < 20, seconds  # about 2-4 s on 2 busy cores; the full graph took over 14 minutes
    assert width < 6000 and height < 6000, (width, height)  # the full/scope-folded ones were 20000+ wide
