"""Per-parameter gradient norms and per-variable error norms, against NumPy."""
import numpy as np
import pytest

import fluidlite as fl
from fluidlite import clip as C
from fluidlite import layers

EC = 0.02  # error clip bound, active for this data


def net(grad_clip=None, callbacks=(), error_clip=None, dtype="float64"):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = 5
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[4], dtype=dtype)
        y = layers.data(name="y", shape=[1], dtype=dtype)
        h1 = layers.fc(x, size=5, act="tanh")
        h2 = layers.fc(h1, size=3, act="tanh")
        for h in (h1, h2):
            h.error_clip = None if error_clip is None else C.ErrorClipByValue(error_clip)
        loss = layers.mean(layers.square_error_cost(layers.fc(h2, size=1), y))
        opt = fl.optimizer.SGD(0.0)  # parameters stay: the NumPy reference reads them after the run
        raw = opt.backward(loss, callback=list(callbacks))
        _, clipped = opt.apply_optimize(loss, None, raw, grad_clip=grad_clip)
    return main, startup, raw, clipped, (h1, h2)


def numpy_backward(P, x, y, error_clip=None):
    """Gradients of every parameter and of d loss / d h2, d h1 before and after the error clip."""
    h1 = np.tanh(x @ P["fc_0.w_0"] + P["fc_0.b_0"])
    h2 = np.tanh(h1 @ P["fc_1.w_0"] + P["fc_1.b_0"])
    pred = h2 @ P["fc_2.w_0"] + P["fc_2.b_0"]
    dp = 2 * (pred - y) / len(y)
    clip = (lambda d: np.clip(d, -error_clip, error_clip)) if error_clip else (lambda d: d)
    dh2 = dp @ P["fc_2.w_0"].T
    dz2 = clip(dh2) * (1 - h2 ** 2)
    dh1 = dz2 @ P["fc_1.w_0"].T
    dz1 = clip(dh1) * (1 - h1 ** 2)
    grads = {"fc_0.w_0": x.T @ dz1, "fc_0.b_0": dz1.sum(0), "fc_1.w_0": h1.T @ dz2, "fc_1.b_0": dz2.sum(0),
             "fc_2.w_0": h2.T @ dp, "fc_2.b_0": dp.sum(0)}
    return grads, {"h2": (dh2, clip(dh2)), "h1": (dh1, clip(dh1))}


def data(dtype="float64"):
    rng = np.random.default_rng(2)
    return rng.standard_normal((6, 4)).astype(dtype), (rng.standard_normal((6, 1)) * 5).astype(dtype)


def run(main, startup, fetch, dtype="float64"):
    exe = fl.Executor()
    exe.run(startup)
    x, y = data(dtype)
    vals = exe.run(main, feed={"x": x, "y": y}, fetch_list=fetch)
    P = {p.name: fl.fetch_var(p.name).astype(np.float64) for p in main.all_parameters()}
    return vals, P, x.astype(np.float64), y.astype(np.float64)


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_gradient_norms_share_the_global_norm_pass(norm_type):
    main, startup, raw, clipped, _ = net(C.GradientClipByGlobalNorm(0.05, norm_type=norm_type))
    n_ops = len(main.global_block().ops)
    before, after = C.gradient_norms(raw, norm_type), C.gradient_norms(clipped, norm_type)
    new_ops = main.global_block().ops[n_ops:]
    assert {op.type for op in new_ops} == {"pick_norm"}  # no second pass over the gradients
    assert {op.role for op in new_ops} == {"grad_clip"}
    names = list(before)
    vals, P, x, y = run(main, startup, [before[n] for n in names] + [after[n] for n in names])
    G, _ = numpy_backward(P, x, y)
    norm = (lambda g: np.abs(g).max()) if norm_type == float("inf") else np.linalg.norm
    total = max(map(norm, G.values())) if norm_type == float("inf") else np.sqrt(sum(norm(g) ** 2 for g in G.values()))
    scale = 0.05 / max(total, 0.05)
    assert scale < 1  # the clip is active: before and after differ
    for k, n in enumerate(names):
        assert vals[k].dtype == np.float32 and vals[k].shape == (1,)
        np.testing.assert_allclose(vals[k], [norm(G[n])], rtol=1e-6, err_msg=n)
        np.testing.assert_allclose(vals[len(names) + k], [norm(G[n]) * scale], rtol=1e-6, err_msg=n)


def test_gradient_norms_without_a_group_clip_measure_in_one_pass():
    main, startup, raw, clipped, _ = net(C.GradientClipByValue(0.01), dtype="float32")
    n_ops = len(main.global_block().ops)
    norms = C.gradient_norms(clipped)
    assert [op.type for op in main.global_block().ops[n_ops:]].count("global_norm") == 1
    vals, P, x, y = run(main, startup, list(norms.values()), "float32")
    G, _ = numpy_backward(P, x, y)
    for v, n in zip(vals, norms):
        np.testing.assert_allclose(v, [np.linalg.norm(np.clip(G[n], -0.01, 0.01))], rtol=1e-5, err_msg=n)


@pytest.mark.parametrize("order", ["clip_then_norm", "norm_then_clip"])
def test_error_norms_before_or_after_the_error_clip(order):
    cbs = [C.error_clip_callback, C.error_norm_callback]
    main, startup, _, _, (h1, h2) = net(callbacks=cbs if order == "clip_then_norm" else cbs[::-1], error_clip=EC)
    norm_vars = C.error_norm_vars(main)
    names = [v.name for v in norm_vars]
    assert names.index(C.norm_var_name(h2.name)) < names.index(C.norm_var_name(h1.name))  # loss toward inputs
    assert not any(n.startswith(("x@", "y@", "fc_0.w_0", "fc_0.b_0")) for n in names)  # no data, no parameters
    assert all(v.shape == (1,) for v in norm_vars)
    vals, P, x, y = run(main, startup, [C.norm_var_name(h2.name), C.norm_var_name(h1.name)])
    _, E = numpy_backward(P, x, y, EC)
    pick = 1 if order == "clip_then_norm" else 0
    for v, key in zip(vals, ("h2", "h1")):
        np.testing.assert_allclose(v, [np.linalg.norm(E[key][pick])], rtol=1e-10, err_msg=key)
    assert np.linalg.norm(E["h1"][0]) > np.linalg.norm(E["h1"][1]) * 1.1  # the clip is active: the orders differ


def test_error_norm_vars_of_every_hidden_variable_in_backward_order():
    main, startup, _, _, _ = net(callbacks=[C.error_norm_callback])
    block = main.global_block()
    hidden = [n for n, v in block.vars.items() if not v.persistable and not v.is_data and "@" not in n]
    produced = [v.name[:-len("@GRAD@NORM")] for v in C.error_norm_vars(main)]
    assert set(produced) == set(hidden) - {max(hidden, key=lambda n: n.startswith("mean"))}  # all but the loss
    forward_order = [n for n in hidden if n in produced]
    assert produced == forward_order[::-1]
    vals, P, x, y = run(main, startup, [C.norm_var_name(produced[0])])
    assert vals[0][0] > 0


@pytest.mark.parametrize("rows", [40, 1200])  # serial and parallel (segment) kernels
@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
def test_global_norm_per_tensor_norms_from_the_same_pass(rows, norm_type, monkeypatch):
    from fluidlite.ops import common
    from op_test import run_op

    monkeypatch.setattr(common, "PARALLEL_MIN", 1 << 19)

    rng = np.random.default_rng(rows)
    xs = [rng.standard_normal((rows, 500)), rng.standard_normal(7), np.zeros((0, 3)), rng.standard_normal((3, 4))]
    xs[1][2] = 30.0  # the largest element sits in a small tensor
    assert (sum(a.size for a in xs) >= common.PARALLEL_MIN) == (rows > 1000)
    per = np.array([np.abs(a).max(initial=0) if norm_type == float("inf") else np.linalg.norm(a) for a in xs])
    got = run_op("global_norm", {"X": xs}, {"norm_type": norm_type}, outputs=("Out", "TensorNorms"))
    np.testing.assert_allclose(got["TensorNorms"], per, rtol=1e-12)
    total = per.max() if norm_type == float("inf") else np.sqrt(np.sum(per ** 2))
    np.testing.assert_allclose(got["Out"], [total], rtol=1e-12)
    xs[0][rows - 1, 499] = np.nan  # the last element of the last work item
    got = run_op("global_norm", {"X": xs}, {"norm_type": norm_type}, outputs=("Out", "TensorNorms"))
    assert np.isnan(got["Out"][0]) and np.isnan(got["TensorNorms"][0]) and not np.isnan(got["TensorNorms"][1:]).any()
