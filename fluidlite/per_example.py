"""Per-example gradient clipping built by the graph compiler (DP-SGD; see docs/privacy.md).

`build(optimizer, loss, clip, ...)` replaces `minimize`'s backward-and-clip stages:

1. Find every op on a path from a trainable parameter to the loss. An op that reads a parameter needs a
   rule in `RULES` (keyed by op type: the one place that says how an op's parameters get per-example
   norms); an op that mixes examples (its output loses the batch dimension) is refused.
2. Backward to the *outputs* of the parameter-reading ops only: the gradient ops compute activation
   gradients, never a parameter gradient.
3. Stage one: per parameter, a `dp_*_norm` op gives the [B] squared norms of the per-example gradients
   from its activations A and output gradients G (ghost norms); `dp_clip_norm` sums them into
   `||g_i||` and the factors `c_i = min(1, C / ||g_i||)`.
4. Stage two: per parameter, a `dp_*_clipped_sum` op gives sum_i c_i g_i as A^T diag(c) G (book-keeping),
   then `dp_gaussian_noise` adds the noise and divides by B. The optimizer updates with the result.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .backward import _as_names, _Builder, _callbacks, _seed
from .framework import ROLE_GRAD_CLIP, Parameter, default_startup_program
from .ops.elementwise import layout
from .random_state import STATE_DTYPE, STATE_SHAPE

NORM_NAME = "per_example@NORM"  # the [B] per-example gradient norms (before clipping)
SCALE_NAME = "per_example@SCALE"  # the [B] clip factors min(1, C / norm)


@dataclass
class Use:
    """One op's read of a parameter, as the per-example ops need it."""

    kind: str  # "linear", "bias", "embedding", "conv2d", ...: the pair of dp_<kind>_* ops that handle it
    out: str  # the op output whose gradient G the rule reads
    operand: str | None  # A (linear: the activation) or Ids (embedding); None for a bias
    attrs: dict = field(default_factory=dict)  # per-use attribute values (one entry of each list attr)
    out_grad: str | None = None  # the gradient of `out`, once backward made it
    inputs: dict = field(default_factory=dict)  # kinds taking one use: the op's inputs besides G and Param


def _op_error(op, message):
    return ValueError(f"GradientClipPerExample: op '{op.type}' ({op.to_string()}): {message}")


def batch_axis(block, name, op) -> int:
    """The dimension of `name` marked -1 at build time: the batch. Exactly one is required."""
    shape = block.var(name).shape
    axes = [k for k, d in enumerate(shape) if d == -1]
    if len(axes) != 1:
        raise _op_error(op, f"variable {name!r} of shape {list(shape)} needs exactly one batch dimension "
                            "(-1) to tell examples apart")
    return axes[0]


def _linear(op, block, x_name, row_dims, scale=1.0, transpose=False):
    axis = batch_axis(block, x_name, op)
    if axis >= row_dims:
        raise _op_error(op, f"the batch dimension of {x_name!r} is among the contracted ones")
    return Use("linear", op.output("Out")[0], x_name,
               {"batch_axes": axis, "row_dims": row_dims, "scales": scale, "transposes": int(transpose)})


def _mul_rule(op, slot, block):
    w = block.var(op.input("Y")[0])
    if slot != "Y" or op.attrs["y_num_col_dims"] != 1 or len(w.shape) != 2:
        raise _op_error(op, "per-example norms need the parameter as a 2-D Y")
    return _linear(op, block, op.input("X")[0], op.attrs["x_num_col_dims"])


def _matmul_rule(op, slot, block):
    x = block.var(op.input("X")[0])
    if slot != "Y" or len(block.var(op.input("Y")[0]).shape) != 2 or op.attrs["transpose_X"] or len(x.shape) < 2:
        raise _op_error(op, "per-example norms need the parameter as a 2-D Y and X untransposed of rank >= 2")
    return _linear(op, block, x.name, len(x.shape) - 1, op.attrs["alpha"], op.attrs["transpose_Y"])


def bias_dims(xs, ys, axis):
    """[start, end) of the dims of elementwise X that a bias Y of more than one element covers (its size-1
    dims trimmed), or None when the shapes do not fit."""
    res = layout(tuple(xs), tuple(ys), axis)
    if isinstance(res, str):
        return None
    covered = [k for k, d in enumerate(res[2]) if d != 1]
    return (covered[0], covered[-1] + 1) if covered else (len(xs), len(xs))


def _add_rule(op, slot, block):
    out = op.output("Out")[0]
    if slot != "Y":
        raise _op_error(op, "per-example norms need the parameter as Y (a bias)")
    axis = batch_axis(block, out, op)
    span = bias_dims(block.var(op.input("X")[0]).shape, block.var(op.input("Y")[0]).shape, op.attrs["axis"])
    if span is None or axis >= span[0]:
        raise _op_error(op, "the bias must cover dims after the batch dimension")
    return Use("bias", out, None, {"batch_axes": axis, "row_dims": span[0], "bias_ends": span[1]})


def _lookup_rule(op, slot, block):
    ids, out = op.input("Ids")[0], op.output("Out")[0]
    axis = batch_axis(block, out, op)
    return Use("embedding", out, ids, {"batch_axes": axis, "row_dims": len(block.var(out).shape) - 1,
                                       "padding_idx": op.attrs["padding_idx"]})


def _conv_rule(op, slot, block):
    x = op.input("Input")[0]
    if slot != "Filter" or batch_axis(block, x, op) != 0:
        raise _op_error(op, "per-example norms need the parameter as Filter and the batch first")
    return Use("conv2d", op.output("Output")[0], x,
               {k: op.attrs[k] for k in ("strides", "paddings", "dilations", "groups")}, inputs={"Input": x})


def _gru_rule(op, slot, block):
    """The unit's weight and bias act on its pre-activations, whose gradient is that of its Input."""
    x, hp = op.input("Input")[0], op.input("HiddenPrev")[0]
    if batch_axis(block, x, op) != 0 or batch_axis(block, hp, op) != 0:
        raise _op_error(op, "per-example norms need the batch first in Input and HiddenPrev")
    if slot == "Bias":
        return Use("bias", x, None, {"batch_axes": 0, "row_dims": 1, "bias_ends": 2})
    if slot != "Weight":
        raise _op_error(op, f"per-example norms need the parameter as Weight or Bias, not {slot}")
    return Use("gru_weight", x, None, inputs={"HiddenPrev": hp, "ResetHiddenPrev": op.output("ResetHiddenPrev")[0]})


def _layer_norm_rule(op, slot, block):
    x, y, begin = op.input("X")[0], op.output("Y")[0], op.attrs["begin_norm_axis"]
    axis = batch_axis(block, y, op)
    if axis >= begin:
        raise _op_error(op, "the batch dimension is among the normalised ones")
    if slot == "Bias":
        return Use("bias", y, None, {"batch_axes": axis, "row_dims": begin, "bias_ends": len(block.var(y).shape)})
    return Use("layer_norm_scale", y, x, {"batch_axis": axis, "begin_norm_axis": begin, "epsilon": op.attrs["epsilon"]},
               inputs={"X": x, "Mean": op.output("Mean")[0], "Variance": op.output("Variance")[0]})


# op type -> rule(op, slot of the parameter, block) -> Use.
RULES = {"mul": _mul_rule, "matmul": _matmul_rule, "elementwise_add": _add_rule, "lookup_table": _lookup_rule,
         "conv2d": _conv_rule, "layer_norm": _layer_norm_rule, "gru_unit": _gru_rule}
# op types that mix examples although their outputs keep a batch dimension
MIXING = {"batch_norm"}
_LIST_ATTRS = {"linear": ("batch_axes", "row_dims", "scales", "transposes"),
               "bias": ("batch_axes", "row_dims", "bias_ends"),
               "embedding": ("batch_axes", "row_dims", "padding_idx"), "gru_weight": ()}
_SINGLE = {"conv2d", "layer_norm_scale"}  # kinds whose op takes one use (the parameter read once), plain attrs


def _loss_is_mean(loss):
    """True for mean(l), False for reduce_sum(l) over all dims; l must have a batch dimension."""
    op = loss.op
    ok = op is not None and (op.type == "mean" or (op.type == "reduce_sum" and (
        op.attrs["reduce_all"] or not op.attrs["dim"] or len(op.attrs["dim"]) == len(loss.block.var(op.input("X")[0]).shape))))
    shape = loss.block.var(op.input("X")[0]).shape if ok else ()
    if not ok or list(shape).count(-1) != 1:
        raise ValueError(f"GradientClipPerExample: the loss {loss.name!r} must be mean(l) or reduce_sum(l) over a "
                         f"per-example l with one batch dimension (-1); it is made by "
                         f"{op.to_string() if op is not None else 'no op'}")
    return op.type == "mean"


def _check_mixing(op, block, params):
    if op.type in MIXING:
        raise _op_error(op, "it mixes the examples of a batch, so per-example gradients are not defined")
    for n in op.output_names:
        v = block._find_var(n)
        if v is not None and v.dtype is not None and v.dtype.kind == "f" and list(v.shape).count(-1) != 1:
            raise _op_error(op, f"its output {n!r} of shape {list(v.shape)} has no single batch dimension (-1), "
                                "so it mixes examples or hides them")


def _params(block, parameter_list):
    program = block.program
    if parameter_list is None:
        params = [p for p in program.all_parameters() if p.trainable]
    else:
        params = [block.var(n) for n in _as_names(parameter_list, "parameter_list")]
    for p in params:
        if getattr(p, "gradient_clip_attr", None) is not None:
            raise ValueError(f"GradientClipPerExample cannot be combined with another gradient clip: parameter "
                             f"{p.name!r} has its own ({p.gradient_clip_attr!r})")
        if isinstance(p, Parameter) and not p.need_clip:
            raise ValueError(f"GradientClipPerExample: parameter {p.name!r} has need_clip=False, which would "
                             "leave its gradient unclipped (not private); use trainable=False to freeze it")
    return params


def find_uses(block, loss, params, no_grad):
    """parameter name -> [Use] for every read on a path to the loss; ValueError for an op without a rule."""
    names = {p.name for p in params}
    ops = list(block.ops)
    path, _ = _Builder(block, no_grad, []).path(ops, names, [loss.name])
    uses = OrderedDict((p.name, []) for p in params)
    for i in path:
        op = ops[i]
        if op is loss.op:
            continue
        read = [(slot, n) for slot, ns in op.inputs.items() for n in ns if n in names]
        if not read:
            _check_mixing(op, block, names)
            continue
        rule = RULES.get(op.type)
        if rule is None:
            raise _op_error(op, f"it reads parameter {read[0][1]!r} but has no per-example norm rule "
                                f"(rules exist for {sorted(RULES)})")
        for slot, n in read:
            uses[n].append(rule(op, slot, block))
    return OrderedDict((n, us) for n, us in uses.items() if us)


def _per_param_op(block, kind, stage, uses, param, extra):
    out = _fresh(block, f"{param.name}@PER_EXAMPLE_{'SQ' if stage == 'norm' else 'CLIPPED'}")
    if kind in _SINGLE:
        if len(uses) > 1:
            raise ValueError(f"GradientClipPerExample: parameter {param.name!r} is read by {len(uses)} {kind} ops; "
                             "per-example norms support one")
        inputs = {**uses[0].inputs, "G": uses[0].out_grad, "Param": param, **extra}
        block.append_op(f"dp_{kind}_{stage}", inputs, {"Out": out}, uses[0].attrs)
        return block.var(out)
    inputs = {"G": [u.out_grad for u in uses]}
    if uses[0].operand is not None:
        inputs["A" if kind == "linear" else "Ids"] = [u.operand for u in uses]
    for slot in uses[0].inputs:  # kinds that read more of the op (gru_weight)
        inputs[slot] = [u.inputs[slot] for u in uses]
    attrs = {a: [u.attrs[a] for u in uses] for a in _LIST_ATTRS[kind]}
    if kind == "linear" and len({u.attrs["transposes"] for u in uses}) > 1:
        raise ValueError(f"GradientClipPerExample: parameter {param.name!r} is read both transposed and not")
    inputs.update(extra)
    block.append_op(f"dp_{kind}_{stage}", inputs, {"Out": out}, attrs)
    return block.var(out)


def _fresh(block, name):
    k, fresh = 0, name
    while block.has_var(fresh):
        k += 1
        fresh = f"{name}@{k}"
    return fresh


def build(optimizer, loss, clip, startup_program=None, parameter_list=None, no_grad_set=None, callback=None):
    """minimize(loss, grad_clip=clip) for a GradientClipPerExample: returns (update ops, params_grads)."""
    block = loss.block
    if loss.shape not in ((), (1,)):
        raise ValueError(f"minimize: loss {loss.name!r} must be a scalar, got shape {list(loss.shape)}")
    mean = _loss_is_mean(loss)
    no_grad = _as_names(no_grad_set, "no_grad_set")
    params = _params(block, parameter_list)
    uses = find_uses(block, loss, params, no_grad)
    if not uses:
        raise ValueError(f"GradientClipPerExample: no trainable parameter reaches the loss {loss.name!r}")
    builder = _Builder(block, no_grad, _callbacks(callback))
    seed = _seed(block, loss, builder.grad_name(loss.name))
    outs = list(dict.fromkeys(u.out for us in uses.values() for u in us))
    grad_of = builder.run(outs, [loss.name], [seed])
    startup = startup_program or default_startup_program()
    pairs = []
    with block.program._role_guard(ROLE_GRAD_CLIP):
        sq = {}
        for name, us in uses.items():
            us = [u for u in us if u.out in grad_of]
            for u in us:
                u.out_grad = grad_of[u.out]
            if len({u.kind for u in us}) > 1:
                raise ValueError(f"GradientClipPerExample: parameter {name!r} is read by ops of different kinds "
                                 f"({sorted({u.kind for u in us})}); per-example norms need one kind")
            if us:
                uses[name] = us
                sq[name] = _per_param_op(block, us[0].kind, "norm", us, block.var(name), {})
        norm, scale = _fresh(block, NORM_NAME), _fresh(block, SCALE_NAME)
        block.append_op("dp_clip_norm", {"SqNorm": list(sq.values())}, {"Norm": norm, "Scale": scale},
                        {"l2_norm_clip": clip.l2_norm_clip, "mean_loss": mean})
        for name in sq:
            p = block.var(name)
            extra = {"Param": p, "Scale": scale}
            pairs.append((p, _per_param_op(block, uses[name][0].kind, "clipped_sum", uses[name], p, extra)))
        if clip.noise_multiplier > 0:
            pairs = _add_noise(block, startup, clip, pairs, norm, mean)
    for transform in optimizer.gradient_transforms:  # e.g. fluidlite.distributed's allreduce
        pairs = transform(loss, pairs)
    return optimizer.apply_optimize(loss, startup_program, pairs)


def _add_noise(block, startup, clip, pairs, norm, mean):
    """One dp_gaussian_noise op per parameter, each with its random stream (fluidlite.random_state). The
    startup program makes the streams' states, so that broadcast_persistables gives every worker the
    same noise (fluidlite.distributed) and running the startup program again restarts them."""
    sblock = startup.global_block()
    seed = {"seed": 0, "fix_seed": False} if clip.seed is None else {"seed": clip.seed, "fix_seed": True}
    out = []
    for p, g in pairs:
        noised = _fresh(block, f"{p.name}@GRAD@DP")
        op = block.append_op("dp_gaussian_noise", {"X": g, "BatchRef": norm}, {"Out": noised},
                             {"stddev": clip.noise_multiplier * clip.l2_norm_clip, "mean_loss": mean, **seed})
        state = op.input("State")[0]
        sblock.create_var(name=state, shape=STATE_SHAPE, dtype=STATE_DTYPE, persistable=True)
        sblock.append_op("random_state_init", {}, {"Out": state})
        out.append((p, block.var(noised)))
    return out
