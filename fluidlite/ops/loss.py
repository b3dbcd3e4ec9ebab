"""Losses: cross_entropy, softmax_with_cross_entropy, square_error_cost, sigmoid_cross_entropy_with_logits.

Class-wise losses take [..., C] inputs with int64 labels [..., 1] (or soft labels [..., C] of the
input's dtype) and give [..., 1]; a label equal to ignore_index gives loss 0 and no gradient."""
import numpy as np

from ..kernels import loss as K
from ..registry import Attr, defop
from ..shapes import dims_match
from .common import grad_op, is_large

# log() arguments are clamped to this so a zero probability gives a large finite loss, not inf
_EPS = 1e-20


def _same_shape(a, b):
    return len(a) == len(b) and all(map(dims_match, a, b))


def _class_infer(x_slot, out_slots):
    """infer for [..., C] inputs with a hard or soft Label; every output in `out_slots` is (shape, C?)."""

    def infer(ctx):
        dtype = ctx.expect_dtype(x_slot)
        xs, ls = ctx.shape(x_slot), ctx.shape("Label")
        if len(xs) < 2:
            raise ctx.error(f"{x_slot} must be [..., classes] of rank >= 2, got {list(xs)}", x_slot)
        if ctx.attrs["soft_label"]:
            if ctx.dtype("Label") != dtype:
                raise ctx.error(f"soft_label needs a {dtype} Label, got {ctx.dtype('Label')}", x_slot, "Label")
            if not _same_shape(xs, ls):
                raise ctx.error(f"soft Label must have {x_slot}'s shape: {list(ls)} vs {list(xs)}", x_slot, "Label")
        else:
            if ctx.dtype("Label") != np.int64:
                raise ctx.error(f"Label must be int64 class indices (or set soft_label), got {ctx.dtype('Label')}",
                                "Label")
            if len(ls) != len(xs) or not _same_shape(xs[:-1], ls[:-1]) or not dims_match(ls[-1], 1):
                raise ctx.error(f"Label must be shaped {list(xs[:-1]) + [1]} for {x_slot} {list(xs)}, got {list(ls)}",
                                x_slot, "Label")
        return {slot: (xs[:-1] + (1,) if one else xs, dtype) for slot, one in out_slots.items()}

    return infer


def _flat(a, c):
    return np.ascontiguousarray(a).reshape(-1, c)


def _bad_label(op, name, label, row, classes):
    return ValueError(f"{op}: label {label.reshape(-1)[row]} in Label={name!r} is outside [0, {classes}) "
                      f"(and is not ignore_index)")


_CLASS_ATTRS = {"soft_label": Attr(bool, False), "ignore_index": Attr(int, -100)}


def _grad_outputs(ctx, names):
    """Picks the wanted gradients out of a kernel's (d0, d1) by output slot names."""
    wanted = [i for i, slot in enumerate(names) if ctx.has_output(slot)]
    return lambda grads: grads[wanted[0]] if len(wanted) == 1 else tuple(grads[i] for i in wanted)


# ---------------------------------------------------------------- cross_entropy

def _lower_ce(ctx):
    xs = ctx.shape("X")
    c, out_shape, ign = xs[-1], xs[:-1] + (1,), ctx.attrs["ignore_index"]
    eps = ctx.dtype("X").type(_EPS)
    if ctx.attrs["soft_label"]:
        return lambda x, label: K.cross_entropy_soft(_flat(x, c), _flat(label, c), eps).reshape(out_shape)
    name = ctx.meta("Label").name

    def run(x, label):
        out, bad = K.cross_entropy_hard(_flat(x, c), _flat(label, 1)[:, 0], ign, eps)
        if bad >= 0:
            raise _bad_label("cross_entropy", name, label, bad, c)
        return out.reshape(out_shape)

    return run


def _lower_ce_grad(ctx):
    xs = ctx.shape("X")
    c, ign, eps = xs[-1], ctx.attrs["ignore_index"], ctx.dtype("X").type(_EPS)
    if not ctx.attrs["soft_label"]:
        return lambda x, label, dout: K.cross_entropy_hard_grad(
            _flat(x, c), _flat(label, 1)[:, 0], _flat(dout, 1), ign, eps).reshape(xs)
    pick = _grad_outputs(ctx, ("X@GRAD", "Label@GRAD"))

    def run(x, label, dout):
        dx, dl = K.cross_entropy_soft_grad(_flat(x, c), _flat(label, c), _flat(dout, 1), eps)
        return pick((dx.reshape(xs), dl.reshape(xs)))

    return run


def _grad_infer(*slots):
    return lambda ctx: {s + "@GRAD": (ctx.shape(s), ctx.dtype(s)) for s in slots}


defop("cross_entropy", inputs=("X", "Label"), attrs=_CLASS_ATTRS, infer=_class_infer("X", {"Y": True}),
      outputs=("Y",), lower=_lower_ce,
      grad=lambda g: [grad_op("cross_entropy_grad", g, {"X": g.i("X"), "Label": g.i("Label"), "Y@GRAD": g.og("Y")},
                              {"X@GRAD": g.ig("X"), "Label@GRAD": g.ig("Label")})],
      doc="Y = -log(X[label]) (hard) or -sum(Label * log(X)) (soft), X holding probabilities; the log's "
          f"argument is clamped to >= {_EPS}. An out-of-range label raises ValueError at run time.")
defop("cross_entropy_grad", inputs=("X", "Label", "Y@GRAD"), outputs=("X@GRAD", "Label@GRAD"),
      optional=("X@GRAD", "Label@GRAD"), attrs=_CLASS_ATTRS, infer=_grad_infer("X", "Label"), lower=_lower_ce_grad)

# ---------------------------------------------------------------- softmax_with_cross_entropy


def _lower_swce(ctx):
    zs = ctx.shape("Logits")
    c, loss_shape, ign = zs[-1], zs[:-1] + (1,), ctx.attrs["ignore_index"]

    def result(sm, loss):
        return sm.reshape(zs), loss.reshape(loss_shape)

    if ctx.attrs["soft_label"]:
        return lambda z, label: result(*K.softmax_ce_soft(_flat(z, c), _flat(label, c)))
    name = ctx.meta("Label").name

    def run(z, label):
        sm, loss, bad = K.softmax_ce_hard(_flat(z, c), _flat(label, 1)[:, 0], ign)
        if bad >= 0:
            raise _bad_label("softmax_with_cross_entropy", name, label, bad, c)
        return result(sm, loss)

    return run


def _lower_swce_grad(ctx):
    zs = ctx.shape("Softmax")
    c, ign, eps = zs[-1], ctx.attrs["ignore_index"], ctx.dtype("Softmax").type(_EPS)
    if not ctx.attrs["soft_label"]:
        return lambda sm, label, dloss, dsm: K.softmax_ce_hard_grad(
            _flat(sm, c), _flat(label, 1)[:, 0], _flat(dloss, 1), _flat(dsm, c), ign).reshape(zs)
    pick = _grad_outputs(ctx, ("Logits@GRAD", "Label@GRAD"))

    def run(sm, label, dloss, dsm):
        dz, dl = K.softmax_ce_soft_grad(_flat(sm, c), _flat(label, c), _flat(dloss, 1), _flat(dsm, c), eps)
        return pick((dz.reshape(zs), dl.reshape(zs)))

    return run


def _swce_grad(g):
    inputs = {"Softmax": g.o("Softmax"), "Label": g.i("Label"), "Loss@GRAD": g.og("Loss"),
              "Softmax@GRAD": g.og("Softmax")}
    return [grad_op("softmax_with_cross_entropy_grad", g, inputs,
                    {"Logits@GRAD": g.ig("Logits"), "Label@GRAD": g.ig("Label")})]


def _swce_grad_infer(ctx):
    return {"Logits@GRAD": (ctx.shape("Softmax"), ctx.dtype("Softmax")),
            "Label@GRAD": (ctx.shape("Label"), ctx.dtype("Label"))}


defop("softmax_with_cross_entropy", inputs=("Logits", "Label"), outputs=("Softmax", "Loss"),
      attrs=_CLASS_ATTRS, infer=_class_infer("Logits", {"Softmax": False, "Loss": True}), lower=_lower_swce,
      grad=_swce_grad,
      doc="Softmax = softmax(Logits) over the last dim; Loss = logsumexp(Logits) - Logits[label] (hard) "
          "or sum(Label * (logsumexp - Logits)) (soft), computed stably. Gradients flow from both Loss "
          "and Softmax; a soft Label gets -log(Softmax) * Loss@GRAD (log clamped).")
defop("softmax_with_cross_entropy_grad", inputs=("Softmax", "Label", "Loss@GRAD", "Softmax@GRAD"),
      outputs=("Logits@GRAD", "Label@GRAD"), optional=("Logits@GRAD", "Label@GRAD"), attrs=_CLASS_ATTRS,
      infer=_swce_grad_infer, lower=_lower_swce_grad)

# ---------------------------------------------------------------- elementwise losses


def _pair_infer(x_slot, y_slot):
    def infer(ctx):
        dtype = ctx.expect_dtype(x_slot, y_slot)
        xs, ys = ctx.shape(x_slot), ctx.shape(y_slot)
        if not _same_shape(xs, ys):
            raise ctx.error(f"{x_slot} and {y_slot} must have one shape, got {list(xs)} and {list(ys)}",
                            x_slot, y_slot)
        return {"Out": (tuple(max(a, b) for a, b in zip(xs, ys)), dtype)}

    return infer


def _lower_sq(ctx):
    return K.square_error_parallel if is_large(ctx.meta("X")) else K.square_error


def _lower_sq_grad(ctx):
    return K.square_error_grad_parallel if is_large(ctx.meta("X")) else K.square_error_grad


defop("square_error_cost", inputs=("X", "Y"), infer=_pair_infer("X", "Y"), lower=_lower_sq,
      grad_reads=("X", "Y"), grad_lower=_lower_sq_grad,
      doc="Out = (X - Y)^2 elementwise; X and Y (the label) have one shape.")
defop("sigmoid_cross_entropy_with_logits", inputs=("X", "Label"), infer=_pair_infer("X", "Label"),
      kernel=K.sigmoid_ce, grad_reads=("X", "Label"), grad_kernel=K.sigmoid_ce_grad,
      doc="Out = max(X, 0) - X * Label + log(1 + exp(-|X|)): elementwise logistic loss of logits X "
          "against probabilities Label.")
