"""Losses and fill_constant."""
from __future__ import annotations

from .helper import LayerHelper, check_variable


def cross_entropy(input, label, soft_label=False, ignore_index=-100):
    """-log(input[label]) per row ([..., 1]); `input` holds probabilities (e.g. a softmax output)."""
    helper = LayerHelper("cross_entropy")
    return helper.append_op("cross_entropy", {"X": check_variable(input, "input", "cross_entropy"),
                                              "Label": check_variable(label, "label", "cross_entropy")},
                            {"soft_label": soft_label, "ignore_index": ignore_index}, outputs=("Y",))


def softmax_with_cross_entropy(logits, label, soft_label=False, ignore_index=-100, return_softmax=False):
    """Cross entropy of softmax(logits), computed stably; returns loss [..., 1] (and the softmax)."""
    helper = LayerHelper("softmax_with_cross_entropy")
    softmax, loss = helper.append_op(
        "softmax_with_cross_entropy",
        {"Logits": check_variable(logits, "logits", "softmax_with_cross_entropy"),
         "Label": check_variable(label, "label", "softmax_with_cross_entropy")},
        {"soft_label": soft_label, "ignore_index": ignore_index}, outputs=("Softmax", "Loss"))
    return (loss, softmax) if return_softmax else loss


def square_error_cost(input, label):
    """(input - label)^2 elementwise; both get gradients unless label has stop_gradient."""
    helper = LayerHelper("square_error_cost")
    return helper.append_op("square_error_cost", {"X": check_variable(input, "input", "square_error_cost"),
                                                  "Y": check_variable(label, "label", "square_error_cost")})


def sigmoid_cross_entropy_with_logits(x, label, name=None):
    """Elementwise logistic loss of logits `x` against probabilities `label`."""
    helper = LayerHelper("sigmoid_cross_entropy_with_logits", name)
    return helper.append_op("sigmoid_cross_entropy_with_logits",
                            {"X": check_variable(x, "x", "sigmoid_cross_entropy_with_logits"),
                             "Label": check_variable(label, "label", "sigmoid_cross_entropy_with_logits")})


def fill_constant(shape, dtype, value, name=None):
    """A tensor of `shape` filled with `value`; it stops gradients."""
    out = LayerHelper("fill_constant", name).append_op("fill_constant", {},
                                                       {"shape": list(shape), "dtype": dtype, "value": value})
    out.stop_gradient = True
    return out
