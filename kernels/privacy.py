"""Kernels for per-example gradient clipping (DP-SGD): ghost norms, clipped sums and Gaussian noise.

Arrays arrive batch-major: `a` [B, S, I] holds example b's S activation rows, `g` [B, S, O] the
matching output-gradient rows; `pe` [B, O] per-example bias gradients; `ids` [B, S] token ids
(-1: no gradient). No kernel materialises more than one I x O matrix per thread.
"""
import math

import numpy as np
from numba import njit, prange

from . import blas


@njit(cache=True, error_model="numpy")
def _sq(x):
    s = 0.0
    for v in x.reshape(-1):
        s += v * v
    return s


@njit(cache=True, error_model="numpy")
def _example_sq_norm(a, g):
    """||a^T g||_F^2 for one example's a [S, I], g [S, O]: rank-1 dot products, the Gram identity
    sum_{s,t} (a_s . a_t)(g_s . g_t) (Li et al. 2022), or the I x O gradient when that is cheaper."""
    s, i, o = a.shape[0], a.shape[1], g.shape[1]
    if s == 1:
        return _sq(a[0]) * _sq(g[0])
    if s * (i + o) <= i * o:
        return np.sum(blas.dot(a, a.T) * blas.dot(g, g.T))
    return _sq(blas.dot(a.T, g))


@njit(cache=True, error_model="numpy", parallel=True)
def linear_sq_norms(a, g):
    """[B] squared Frobenius norms of the per-example weight gradients a[b]^T g[b]."""
    out = np.empty(a.shape[0], a.dtype)
    for b in prange(a.shape[0]):
        out[b] = _example_sq_norm(a[b], g[b])
    return out


@njit(cache=True, error_model="numpy")
def scale_rows(g, c):
    """g [P, B, Q] with row (p, b, :) multiplied by c[b]."""
    out = np.empty_like(g)
    for p in range(g.shape[0]):
        for b in range(g.shape[1]):
            cb = c[b]
            for q in range(g.shape[2]):
                out[p, b, q] = g[p, b, q] * cb
    return out


@njit(cache=True, error_model="numpy")
def bias_per_example(g):
    """g [P, B, M, O, R] -> [B, O]: each example's bias gradient (summed over P, M and R)."""
    out = np.zeros((g.shape[1], g.shape[3]), g.dtype)
    for p in range(g.shape[0]):
        for b in range(g.shape[1]):
            for m in range(g.shape[2]):
                for o in range(g.shape[3]):
                    s = 0.0
                    for r in range(g.shape[4]):
                        s += g[p, b, m, o, r]
                    out[b, o] += s
    return out


@njit(cache=True, error_model="numpy")
def row_sq_norms(pe):
    """[B] squared norms of the rows of pe [B, O]."""
    out = np.empty(pe.shape[0], pe.dtype)
    for b in range(pe.shape[0]):
        out[b] = _sq(pe[b])
    return out


@njit(cache=True, error_model="numpy")
def weighted_row_sum(pe, c):
    """sum_b c[b] * pe[b] for pe [B, O]."""
    out = np.zeros(pe.shape[1], pe.dtype)
    for b in range(pe.shape[0]):
        for o in range(pe.shape[1]):
            out[o] += c[b] * pe[b, o]
    return out


@njit(cache=True, error_model="numpy", parallel=True)
def embedding_sq_norms(ids, g):
    """[B] squared norms of per-example embedding gradients: rows of g [B, S, D] with equal ids add up
    (one sort per example); ids < 0 contribute nothing."""
    n, s, d = g.shape
    out = np.zeros(n, g.dtype)
    for b in prange(n):
        order = np.argsort(ids[b])
        acc = np.zeros(d, g.dtype)
        total = 0.0
        k = 0
        while k < s:
            cur = ids[b, order[k]]
            acc[:] = 0.0
            while k < s and ids[b, order[k]] == cur:
                acc += g[b, order[k]]
                k += 1
            if cur >= 0:
                total += _sq(acc)
        out[b] = total
    return out


@njit(cache=True, error_model="numpy")
def embedding_clipped_sum(ids, g, c, vocab):
    """[vocab, D]: row ids[b, s] accumulates c[b] * g[b, s] (ids < 0 skipped)."""
    out = np.zeros((vocab, g.shape[2]), g.dtype)
    for b in range(g.shape[0]):
        for s in range(g.shape[1]):
            i = ids[b, s]
            if i >= 0:
                out[i] += c[b] * g[b, s]
    return out


@njit(cache=True, error_model="numpy")
def clip_factors(sq, factor, clip):
    """norm = sqrt(sq) * factor and scale = min(1, clip / norm) (1 for a zero norm, NaN for a NaN norm)."""
    norm = np.empty_like(sq)
    scale = np.empty_like(sq)
    for b in range(sq.shape[0]):
        nb = np.sqrt(sq[b]) * factor
        norm[b] = nb
        scale[b] = clip / nb if nb > clip else (1.0 if nb <= clip else np.nan)
    return norm, scale


# ---- Gaussian noise: a counter-based ziggurat (Marsaglia and Tsang 2000) ---------------------------
# Element j of a draw with 64-bit key k takes its first random word from SplitMix64's output function
# at k + (j + 1) * GAMMA, further words (rare rejections) from that word's own Weyl sequence. So each
# value depends on (k, j) alone: any thread count, any chunking, the same noise.

_GAMMA = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, error_model="numpy", inline="always")
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, error_model="numpy", inline="always")
def _unit(h):
    """A uniform in (0, 1) from the top 53 bits of h."""
    return ((h >> np.uint64(11)) + np.uint64(1)) * (1.0 / 9007199254740994.0)


@njit(cache=True, error_model="numpy")
def _ziggurat_slow(h, kn, wn, xt, ft):
    """The ziggurat's rejection steps for a word h whose fast test failed (layer i = h's low 7 bits,
    s = h's top 53 bits as a signed int, u = s / 2^52 in [-1, 1)): the wedge test, the tail beyond
    xt[1], redraws from h's own Weyl sequence."""
    d = np.uint64(0)
    w = h
    while True:
        i = np.int64(w & np.uint64(127))
        s = np.int64(w) >> 11
        if abs(s) < kn[i]:
            return s * wn[i]
        z = s * wn[i]
        d += np.uint64(1)
        v = _mix(h + d * _GAMMA)
        if i == 0:  # the tail |z| > r (Marsaglia 1964)
            r = xt[1]
            while True:
                a = -math.log(_unit(v)) / r
                d += np.uint64(1)
                b = -math.log(_unit(_mix(h + d * _GAMMA)))
                if 2.0 * b > a * a:
                    return r + a if s > 0 else -(r + a)
                d += np.uint64(1)
                v = _mix(h + d * _GAMMA)
        if ft[i + 1] + _unit(v) * (ft[i] - ft[i + 1]) < math.exp(-0.5 * z * z):
            return z
        d += np.uint64(1)
        w = _mix(h + d * _GAMMA)


@njit(cache=True, error_model="numpy", parallel=True)
def add_gaussian(x, key, std, kn, wn, xt, ft):
    """x += std * N(0, 1) in place for a 1-D x; element j from (key, j) alone. Tables (ops/privacy_ops):
    xt [129] the ziggurat's layer edges (xt[0] = V / f(r), xt[1] = r, ..., xt[128] = 0), ft = exp(-xt^2/2),
    kn[i] = floor(2^52 xt[i+1] / xt[i]) (the fast test on the integer), wn[i] = xt[i] / 2^52."""
    k = np.uint64(key)
    n = x.size
    chunk, block = 1 << 16, 1024
    for c in prange((n + chunk - 1) // chunk):
        words = np.empty(block, np.uint64)
        for start in range(c * chunk, min(n, (c + 1) * chunk), block):
            m = min(block, n - start)
            for t in range(m):  # the hashes first: this loop vectorises
                words[t] = _mix(k + np.uint64(start + t + 1) * _GAMMA)
            for t in range(m):
                h = words[t]
                i = np.int64(h & np.uint64(127))
                s = np.int64(h) >> 11
                if abs(s) < kn[i]:  # about 99% of the draws
                    z = s * wn[i]
                else:
                    z = _ziggurat_slow(h, kn, wn, xt, ft)
                x[start + t] += std * z
    return x
