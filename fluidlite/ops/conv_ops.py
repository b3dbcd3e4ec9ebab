"""conv2d and pool2d over NCHW images (kernels in kernels/conv.py).

Output sizes: conv `Ho = (H + 2p - d(k-1) - 1) // s + 1`; pool `Ho = (H + 2p - k) // s + 1`, or with
`ceil_mode` `(H + 2p - k + s - 1) // s + 1`, minus one when that last window would start in the
bottom padding (it would cover no input).
"""
import numba
import numpy as np

from ..kernels import conv as K
from ..registry import Attr, defop
from .common import parallel_size

# work (multiply-adds) from which a conv unrolls a block's images on threads. The unrolling is memory-bound
# and BLAS already threads the products: on 2 cores the LeNet convs of benchmarks/cnn_step.py ran as fast
# or faster on one thread at every block size
_PARALLEL_FLOPS = 1 << 30
# a serial block's images: few enough that the column block (about _BLOCK_COLS elements) stays in cache
# while BLAS reads it, enough that the product has _MIN_PRODUCT_COLS columns. (64, 20, 12, 12) with 5x5
# filters: 1 image per block took 4.2 + 8.1 ms forward + backward, 8 images 2.9 + 5.0 ms; (64, 1, 28, 28):
# 2 images 0.74 + 0.74 ms, all 64 at once 4.5 + 1.8 ms
_BLOCK_COLS = 1 << 15
_MIN_PRODUCT_COLS = 512
_PARALLEL_BLOCK_COLS = 1 << 20


def _pair_check(minimum):
    def check(v):
        if len(v) != 2:
            return "must be a pair (h, w)"
        return None if min(v) >= minimum else f"must be >= {minimum}"
    return check


def _pair(v):
    return (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v


_CONV_ATTRS = {"strides": Attr("ints", (1, 1), _pair_check(1)), "paddings": Attr("ints", (0, 0), _pair_check(0)),
               "dilations": Attr("ints", (1, 1), _pair_check(1)),
               "groups": Attr(int, 1, lambda v: None if v >= 1 else "must be >= 1")}


def _rank4(ctx, slot, what):
    s = ctx.shape(slot)
    if len(s) != 4:
        raise ctx.error(f"{slot} must be a 4-D {what}, got rank {len(s)} shape {list(s)}", slot)
    if any(d < 1 for d in s[1:]) and slot != "Filter":
        raise ctx.error(f"{slot} needs known C, H and W (only the batch may be -1), got {list(s)}", slot)
    return s


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_geometry(ctx):
    """(x shape, filter shape, geo array) of a conv2d or conv2d_grad op; raises ctx.error on bad input."""
    xs = _rank4(ctx, "Input", "NCHW image batch")
    ws = _rank4(ctx, "Filter", "filter [num_filters, C / groups, kh, kw]")
    n, c, h, w = xs
    f, cg, kh, kw = ws
    (sh, sw), (ph, pw), (dh, dw) = ctx.attrs["strides"], ctx.attrs["paddings"], ctx.attrs["dilations"]
    groups = ctx.attrs["groups"]
    if c % groups:
        raise ctx.error(f"Input has {c} channels, not divisible by groups={groups}", "Input")
    if f % groups:
        raise ctx.error(f"Filter has {f} filters, not divisible by groups={groups}", "Filter")
    if cg * groups != c:
        raise ctx.error(f"Filter reads {cg} channels per group, Input has {c} channels in {groups} group(s) "
                        f"({c // groups} per group)", "Input", "Filter")
    ho, wo = _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ctx.error(f"the filter spans {dh * (kh - 1) + 1}x{dw * (kw - 1) + 1} (with dilation), larger than "
                        f"the padded input {h + 2 * ph}x{w + 2 * pw}", "Input", "Filter")
    geo = np.array([kh, kw, sh, sw, ph, pw, dh, dw, ho, wo], np.int64)
    return xs, ws, geo


def _conv_infer(ctx):
    dtype = ctx.expect_dtype("Input", "Filter")
    xs, ws, geo = _conv_geometry(ctx)
    return {"Output": ((xs[0], ws[0], int(geo[8]), int(geo[9])), dtype)}


def _conv_plan(ctx):
    """(kernel twin choice, w3 shape, geo, number of batch blocks) for the concrete shapes."""
    xs, ws, geo = _conv_geometry(ctx)
    groups = ctx.attrs["groups"]
    n, k, hw = xs[0], ws[1] * ws[2] * ws[3], int(geo[8] * geo[9])
    parallel = n > 1 and numba.get_num_threads() > 1 and n * ws[0] * hw * k >= _PARALLEL_FLOPS
    if parallel:
        per_block = max(1, _PARALLEL_BLOCK_COLS // max(1, k * hw))
    else:
        per_block = max(1, _BLOCK_COLS // max(1, k * hw), -(-_MIN_PRODUCT_COLS // max(1, hw)))
    return parallel, (groups, ws[0] // groups, k), geo, max(1, min(-(-n // per_block), n))


def _c(a, shape):
    return np.ascontiguousarray(a).reshape(shape)


def _lower_conv(ctx):
    parallel, w3, geo, nblk = _conv_plan(ctx)
    kernel = K.conv2d_parallel if parallel else K.conv2d
    out = _conv_infer(ctx)["Output"][0]
    return lambda x, w: kernel(np.ascontiguousarray(x), _c(w, w3), geo, nblk).reshape(out)


def _lower_conv_grad(ctx):
    parallel, w3, geo, nblk = _conv_plan(ctx)
    kernel = K.conv2d_grad_parallel if parallel else K.conv2d_grad
    need_dx, need_dw = ctx.has_output("Input@GRAD"), ctx.has_output("Filter@GRAD")
    xs, ws = ctx.shape("Input"), ctx.shape("Filter")
    d3 = (xs[0], ws[0], int(geo[8] * geo[9]))

    def run(x, w, dout):
        dx, dw = kernel(np.ascontiguousarray(x), _c(w, w3), _c(dout, d3), geo, nblk, need_dx, need_dw)
        grads = ((dx,) if need_dx else ()) + ((dw.reshape(ws),) if need_dw else ())
        return grads if len(grads) > 1 else grads[0]

    return run


defop("conv2d", inputs=("Input", "Filter"), outputs=("Output",), attrs=_CONV_ATTRS, infer=_conv_infer,
      lower=_lower_conv, grad_reads=("Input", "Filter"), grad_lower=_lower_conv_grad, grad_picks=False,
      doc="2-D convolution (cross-correlation) of NCHW Input with Filter [F, C / groups, kh, kw]; "
          "strides, paddings (zeros) and dilations are (h, w) pairs; channel group g sees input channels "
          "g*C/groups.. and makes filters g*F/groups..; Output [N, F, Ho, Wo]. im2col + one BLAS "
          "product per block of images; the blocks run in parallel for large inputs.")

# ---------------------------------------------------------------- pool2d

_POOL_TYPES = ("max", "avg")
_POOL_ATTRS = {
    "pooling_type": Attr(str, "max", lambda v: None if v in _POOL_TYPES else f"must be one of {_POOL_TYPES}"),
    "ksize": Attr("ints", (1, 1), _pair_check(1)), "strides": Attr("ints", (1, 1), _pair_check(1)),
    "paddings": Attr("ints", (0, 0), _pair_check(0)), "global_pooling": Attr(bool, False),
    "ceil_mode": Attr(bool, False), "exclusive": Attr(bool, True)}


def _pool_out(size, k, s, p, ceil):
    if not ceil:
        return (size + 2 * p - k) // s + 1
    out = (size + 2 * p - k + s - 1) // s + 1
    return out - 1 if (out - 1) * s >= size + p else out


def _pool_geometry(ctx):
    xs = _rank4(ctx, "X", "NCHW image batch")
    h, w = xs[2], xs[3]
    a = ctx.attrs
    if a["global_pooling"]:
        (kh, kw), (sh, sw), (ph, pw) = (h, w), (1, 1), (0, 0)
    else:
        (kh, kw), (sh, sw), (ph, pw) = a["ksize"], a["strides"], a["paddings"]
    if ph >= kh or pw >= kw:
        raise ctx.error(f"paddings {[ph, pw]} must be smaller than the pool size {[kh, kw]} (a window would "
                        "hold only padding)", "X")
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ctx.error(f"pool size {[kh, kw]} is larger than the padded input {[h + 2 * ph, w + 2 * pw]}", "X")
    ho, wo = _pool_out(h, kh, sh, ph, a["ceil_mode"]), _pool_out(w, kw, sw, pw, a["ceil_mode"])
    return xs, np.array([kh, kw, sh, sw, ph, pw, 1, 1, ho, wo], np.int64)


def _pool_infer(ctx):
    dtype = ctx.expect_dtype("X")
    xs, geo = _pool_geometry(ctx)
    return {"Out": ((xs[0], xs[1], int(geo[8]), int(geo[9])), dtype)}


def _pool_flags(ctx):
    xs, geo = _pool_geometry(ctx)
    # planes on threads from PARALLEL_MIN pooled inputs: the LeNet step (pools of 737K and 205K inputs) was
    # 6% faster with both serial (one process, plans alternating)
    parallel = xs[0] * xs[1] > 1 and parallel_size(xs[0] * xs[1] * xs[2] * xs[3])
    return parallel, geo, ctx.attrs["pooling_type"] == "max", ctx.attrs["exclusive"]


def _lower_pool(ctx):
    parallel, geo, is_max, exclusive = _pool_flags(ctx)
    kernel = K.pool2d_parallel if parallel else K.pool2d
    return lambda x: kernel(np.ascontiguousarray(x), geo, is_max, exclusive)


def _lower_pool_grad(ctx):
    parallel, geo, is_max, exclusive = _pool_flags(ctx)
    kernel = K.pool2d_grad_parallel if parallel else K.pool2d_grad
    return lambda x, dout: kernel(np.ascontiguousarray(x), np.ascontiguousarray(dout), geo, is_max, exclusive)


defop("pool2d", inputs=("X",), attrs=_POOL_ATTRS, infer=_pool_infer, lower=_lower_pool, grad_reads=("X",),
      grad_lower=_lower_pool_grad,
      doc="Max or average pooling of NCHW X over ksize windows (global_pooling: the whole H x W). Windows "
          "are clipped to the input: padding never wins a max; an exclusive average divides by the "
          "elements inside the input, a non-exclusive one by kh * kw (Paddle). The max's gradient goes to "
          "the first maximum of each window.")
