"""Parameter update kernels (sgd, momentum, adam/adamw) and sign.

Each update kernel writes into the output buffers it is given; the op passes the input arrays
themselves when the update may happen in place (reading and writing element i in the same
iteration, so aliasing is safe), and the kernel then runs a loop over the inputs alone
(kernels/inplace.py says why). The learning rate arrives as a one-element array. Serial and
parallel twins share their per-element body (`_sgd_at`, `_momentum_at`, `_adam_at`); only the
loop (range or prange) differs.
"""
import numpy as np
from numba import njit, prange

from .inplace import same_buffer


@njit(cache=True, error_model="numpy", inline="always")
def _sgd_at(pf, gf, of, rate, i):
    of[i] = pf[i] - rate * gf[i]


@njit(cache=True, error_model="numpy")
def sgd(p, g, lr, p_out):
    rate = lr[0]
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    if same_buffer(p, p_out):
        for i in range(pf.size):
            _sgd_at(pf, gf, pf, rate, i)
    else:
        of = p_out.reshape(-1)
        for i in range(pf.size):
            _sgd_at(pf, gf, of, rate, i)
    return p_out


@njit(cache=True, error_model="numpy", parallel=True)
def sgd_parallel(p, g, lr, p_out):
    rate = lr[0]
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    of = p_out.reshape(-1)
    if same_buffer(p, p_out):
        for i in prange(pf.size):
            _sgd_at(pf, gf, pf, rate, i)
    else:
        for i in prange(pf.size):
            _sgd_at(pf, gf, of, rate, i)
    return p_out


@njit(cache=True, error_model="numpy", inline="always")
def _momentum_at(pf, gf, vf, pof, vof, rate, mu, nesterov, i):
    vel = mu * vf[i] + gf[i]
    vof[i] = vel
    if nesterov:
        pof[i] = pf[i] - rate * (gf[i] + mu * vel)
    else:
        pof[i] = pf[i] - rate * vel


@njit(cache=True, error_model="numpy")
def momentum(p, g, v, lr, mu, nesterov, p_out, v_out):
    rate = lr[0]
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    if same_buffer(p, p_out) and same_buffer(v, v_out):
        for i in range(pf.size):
            _momentum_at(pf, gf, vf, pf, vf, rate, mu, nesterov, i)
    else:
        pof = p_out.reshape(-1)
        vof = v_out.reshape(-1)
        for i in range(pf.size):
            _momentum_at(pf, gf, vf, pof, vof, rate, mu, nesterov, i)
    return p_out, v_out


@njit(cache=True, error_model="numpy", parallel=True)
def momentum_parallel(p, g, v, lr, mu, nesterov, p_out, v_out):
    rate = lr[0]
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    pof = p_out.reshape(-1)
    vof = v_out.reshape(-1)
    if same_buffer(p, p_out) and same_buffer(v, v_out):
        for i in prange(pf.size):
            _momentum_at(pf, gf, vf, pf, vf, rate, mu, nesterov, i)
    else:
        for i in prange(pf.size):
            _momentum_at(pf, gf, vf, pof, vof, rate, mu, nesterov, i)
    return p_out, v_out


@njit(cache=True, error_model="numpy", inline="always")
def _adam_at(pf, gf, af, bf, pof, aof, bof, rate, c, i):
    """One element of Adam; c = (decay, beta1, 1 - beta1, beta2, 1 - beta2, eps) in Param's dtype
    (`_adam_c`); decay < 1 is AdamW's decoupled weight decay (p * decay before the step)."""
    decay, beta1, nbeta1, beta2, nbeta2, eps = c
    gi = gf[i]
    a = beta1 * af[i] + nbeta1 * gi
    b = beta2 * bf[i] + nbeta2 * gi * gi
    aof[i] = a
    bof[i] = b
    pof[i] = pf[i] * decay - rate * a / (np.sqrt(b) + eps)


@njit(cache=True, error_model="numpy", inline="always")
def _adam_c(p, lr, beta1, beta2, eps, coeff):
    """Adam's constants in Param's dtype: float32 arithmetic vectorizes twice as wide (as torch's and
    Paddle's float32 kernels compute); float64 Params compute as before, bit for bit."""
    t = p.dtype.type
    return t(1.0 - lr[0] * coeff), t(beta1), t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(eps)


@njit(cache=True, error_model="numpy", inline="always")
def _adam_rate(lr, b1p, b2p, beta1, beta2, b1p_out, b2p_out):
    """The bias-corrected rate of this step; advances the beta powers (after reading them)."""
    pow1, pow2 = b1p[0], b2p[0]
    b1p_out[0] = pow1 * beta1
    b2p_out[0] = pow2 * beta2
    return lr[0] * np.sqrt(1.0 - pow2) / (1.0 - pow1)


@njit(cache=True, error_model="numpy")
def adam(p, g, lr, m1, m2, b1p, b2p, beta1, beta2, eps, coeff, p_out, m1_out, m2_out, b1p_out, b2p_out):
    """Adam, or AdamW with `coeff` > 0: p <- p * (1 - lr * coeff) before the step (1.0 exactly when
    coeff is 0, so Adam's rounding is unchanged)."""
    c = _adam_c(p, lr, beta1, beta2, eps, coeff)
    rate = p.dtype.type(_adam_rate(lr, b1p, b2p, beta1, beta2, b1p_out, b2p_out))
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    af = m1.reshape(-1)
    bf = m2.reshape(-1)
    if same_buffer(p, p_out) and same_buffer(m1, m1_out) and same_buffer(m2, m2_out):
        for i in range(pf.size):
            _adam_at(pf, gf, af, bf, pf, af, bf, rate, c, i)
    else:  # seven arrays: more than LLVM checks for overlap, so this loop runs scalar
        pof = p_out.reshape(-1)
        aof = m1_out.reshape(-1)
        bof = m2_out.reshape(-1)
        for i in range(pf.size):
            _adam_at(pf, gf, af, bf, pof, aof, bof, rate, c, i)
    return p_out, m1_out, m2_out, b1p_out, b2p_out


@njit(cache=True, error_model="numpy", parallel=True)
def adam_parallel(p, g, lr, m1, m2, b1p, b2p, beta1, beta2, eps, coeff, p_out, m1_out, m2_out, b1p_out, b2p_out):
    c = _adam_c(p, lr, beta1, beta2, eps, coeff)
    rate = p.dtype.type(_adam_rate(lr, b1p, b2p, beta1, beta2, b1p_out, b2p_out))
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    af = m1.reshape(-1)
    bf = m2.reshape(-1)
    pof = p_out.reshape(-1)
    aof = m1_out.reshape(-1)
    bof = m2_out.reshape(-1)
    if same_buffer(p, p_out) and same_buffer(m1, m1_out) and same_buffer(m2, m2_out):
        for i in prange(pf.size):
            _adam_at(pf, gf, af, bf, pf, af, bf, rate, c, i)
    else:
        for i in prange(pf.size):
            _adam_at(pf, gf, af, bf, pof, aof, bof, rate, c, i)
    return p_out, m1_out, m2_out, b1p_out, b2p_out


@njit(cache=True, error_model="numpy")
def sign(x):
    out = np.empty_like(x)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for i in range(xf.size):
        v = xf[i]
        of[i] = 1 if v > 0 else (-1 if v < 0 else 0)
    return out


@njit(cache=True, error_model="numpy")
def _rms_term(gi, vi, beta2, bc2, eps2):
    """g^2 / max(v_hat, eps^2) for one element, v_hat the bias-corrected updated second moment (0 for 0/0)."""
    v_hat = (beta2 * vi + (1.0 - beta2) * gi * gi) / bc2
    d = max(v_hat, eps2)
    return gi * gi / d if d > 0 else 0.0


@njit(cache=True, error_model="numpy")
def update_rms(g, v, beta2, bc2, eps2):
    """RMS over the tensor of g^2 / max(v_hat, eps^2) (StableAdamW's update clipping), float64."""
    gf, vf = g.reshape(-1), v.reshape(-1)
    acc = 0.0
    for i in range(gf.size):
        acc += _rms_term(np.float64(gf[i]), np.float64(vf[i]), beta2, bc2, eps2)
    return np.sqrt(acc / gf.size) if gf.size else 0.0


@njit(cache=True, error_model="numpy", parallel=True)
def update_rms_parallel(g, v, beta2, bc2, eps2):
    # Fixed chunks summed in order: a prange reduction would add in an order that follows the thread
    # count, which fluidlite sets from the machine's load, and the bits would follow the load.
    gf = g.reshape(-1)
    vf = v.reshape(-1)
    n = gf.size
    part = np.zeros(64)
    for c in prange(64):
        acc = 0.0
        for i in range(c * n // 64, (c + 1) * n // 64):
            acc += _rms_term(np.float64(gf[i]), np.float64(vf[i]), beta2, bc2, eps2)
        part[c] = acc
    total = 0.0
    for c in range(64):
        total += part[c]
    return np.sqrt(total / n) if n else 0.0
