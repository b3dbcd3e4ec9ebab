"""Update kernels of the adaptive optimizers: RMSProp and Adagrad (AdamW is
`optim.adam` with a weight-decay coefficient).

Each serial kernel and its `_parallel` twin run the same inlined per-element step; only the loop
differs. Outputs may be the inputs (element i is read and written in the same iteration): the
kernels then loop over the inputs alone, as kernels/inplace.py explains.
"""
import numpy as np
from numba import njit, prange

from .inplace import same_buffer

@njit(cache=True, error_model="numpy", inline="always")
def _rmsprop_at(i, pf, gf, msf, momf, pof, msof, momof, rate, rho, eps, mu):
    g = gf[i]
    ms = rho * msf[i] + (1.0 - rho) * g * g
    mom = mu * momf[i] + rate * g / np.sqrt(ms + eps)
    msof[i] = ms
    momof[i] = mom
    pof[i] = pf[i] - mom


@njit(cache=True, error_model="numpy")
def rmsprop(p, g, ms, mom, lr, rho, eps, mu, p_out, ms_out, mom_out):
    """ms = rho*ms + (1-rho)*g^2; mom = mu*mom + lr*g/sqrt(ms+eps); p -= mom."""
    pf, gf, msf, momf = p.reshape(-1), g.reshape(-1), ms.reshape(-1), mom.reshape(-1)
    rate = lr[0]
    if same_buffer(p, p_out) and same_buffer(ms, ms_out) and same_buffer(mom, mom_out):
        for i in range(pf.size):
            _rmsprop_at(i, pf, gf, msf, momf, pf, msf, momf, rate, rho, eps, mu)
    else:
        pof, msof, momof = p_out.reshape(-1), ms_out.reshape(-1), mom_out.reshape(-1)
        for i in range(pf.size):
            _rmsprop_at(i, pf, gf, msf, momf, pof, msof, momof, rate, rho, eps, mu)
    return p_out, ms_out, mom_out


@njit(cache=True, error_model="numpy", parallel=True)
def rmsprop_parallel(p, g, ms, mom, lr, rho, eps, mu, p_out, ms_out, mom_out):
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    msf = ms.reshape(-1)
    momf = mom.reshape(-1)
    pof = p_out.reshape(-1)
    msof = ms_out.reshape(-1)
    momof = mom_out.reshape(-1)
    rate = lr[0]
    if same_buffer(p, p_out) and same_buffer(ms, ms_out) and same_buffer(mom, mom_out):
        for i in prange(pf.size):
            _rmsprop_at(i, pf, gf, msf, momf, pf, msf, momf, rate, rho, eps, mu)
    else:
        for i in prange(pf.size):
            _rmsprop_at(i, pf, gf, msf, momf, pof, msof, momof, rate, rho, eps, mu)
    return p_out, ms_out, mom_out


@njit(cache=True, error_model="numpy", inline="always")
def _adagrad_at(i, pf, gf, mf, pof, mof, rate, eps):
    g = gf[i]
    m = mf[i] + g * g
    mof[i] = m
    pof[i] = pf[i] - rate * g / (np.sqrt(m) + eps)


@njit(cache=True, error_model="numpy")
def adagrad(p, g, m, lr, eps, p_out, m_out):
    """m += g^2; p -= lr * g / (sqrt(m) + eps)."""
    pf, gf, mf = p.reshape(-1), g.reshape(-1), m.reshape(-1)
    rate = lr[0]
    if same_buffer(p, p_out) and same_buffer(m, m_out):
        for i in range(pf.size):
            _adagrad_at(i, pf, gf, mf, pf, mf, rate, eps)
    else:
        pof, mof = p_out.reshape(-1), m_out.reshape(-1)
        for i in range(pf.size):
            _adagrad_at(i, pf, gf, mf, pof, mof, rate, eps)
    return p_out, m_out


@njit(cache=True, error_model="numpy", parallel=True)
def adagrad_parallel(p, g, m, lr, eps, p_out, m_out):
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    mf = m.reshape(-1)
    pof = p_out.reshape(-1)
    mof = m_out.reshape(-1)
    rate = lr[0]
    if same_buffer(p, p_out) and same_buffer(m, m_out):
        for i in prange(pf.size):
            _adagrad_at(i, pf, gf, mf, pf, mf, rate, eps)
    else:
        for i in prange(pf.size):
            _adagrad_at(i, pf, gf, mf, pof, mof, rate, eps)
    return p_out, m_out
