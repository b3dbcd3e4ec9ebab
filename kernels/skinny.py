"""Float32 products with few rows (a batch of 8 to 128: an LSTM's recurrent products, an MLP's layers),
C = A B or C += A B, in 8 x 32 tiles of explicit AVX-512 fused multiply-adds.

OpenBLAS packs all of B again on every call, which weighs on a product this skinny: on the
development machine (2 vCPUs, AVX-512) a [32, 256] x [256, 1024] product took 158 us on one thread in
OpenBLAS, 109 here; over both threads 75 against 64. Here each 32-column panel of B is packed
while the first row tile multiplies it (its loads are stored to an L1-resident buffer), and the other
row tiles read the packed copy: B rows 4 KiB apart share a cache set, so unpacked they fell out of L1.

Every element of C is one chain of fused multiply-adds over k in order, then added to C when adding:
the bits depend on neither the thread count nor the band a tile falls in.
"""
import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

_I32, _I64 = ir.IntType(32), ir.IntType(64)
ROWS, LANES, VECS = 8, 16, 2  # a tile: 8 rows x 2 vectors of 16 float32 (16 accumulators of 32 registers)
COLS = LANES * VECS
MAX_ROWS = 128  # measured 10-35% faster than OpenBLAS from 8 to 128 rows; more rows not tried


# Numba compiles for the host unless NUMBA_CPU_NAME names another CPU
AVAILABLE = not config.CPU_NAME and bool(binding.get_host_cpu_features().get("avx512f"))


def _tile_intrinsic(pack: bool):
    """C[i0:i0+8, jc:jc+32] (+)= A[i0:i0+8, :] B[:, jb:jb+32]; with `pack`, the B rows read are also stored
    to buf ([K, 32]) for the next tiles, which then pass buf as B and jb = 0."""
    @intrinsic
    def tile(typingctx, a, b, c, i0, jb, jc, add, buf):
        if not all(isinstance(x, types.Array) and x.dtype == types.float32 for x in (a, b, c, buf)):
            return None

        def codegen(context, builder, sig, args):
            f32 = context.get_value_type(types.float32)
            vty = ir.VectorType(f32, LANES)
            vptr = vty.as_pointer()
            A, B, C, P = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 1, 2, 7))
            item = ir.Constant(_I64, 4)
            lda, ldb, ldc = (builder.sdiv(cgutils.unpack_tuple(builder, X.strides, 2)[0], item) for X in (A, B, C))
            depth = cgutils.unpack_tuple(builder, A.shape, 2)[1]
            i0v = args[3]
            a0 = builder.gep(A.data, [builder.mul(i0v, lda)])
            b0 = builder.gep(B.data, [args[4]])
            c0 = builder.gep(C.data, [builder.add(builder.mul(i0v, ldc), args[5])])
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), f"llvm.fma.v{LANES}f32")
            zero, undef = ir.Constant(vty, None), ir.Constant(vty, ir.Undefined)
            splat = ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES)
            const = lambda v: ir.Constant(_I64, v)  # noqa: E731

            entry = builder.block
            loop = builder.append_basic_block("tile_k")
            done = builder.append_basic_block("tile_done")
            builder.cbranch(builder.icmp_signed(">", depth, const(0)), loop, done)
            builder.position_at_end(loop)
            k = builder.phi(_I64)
            k.add_incoming(const(0), entry)
            acc = [builder.phi(vty) for _ in range(ROWS * VECS)]
            for p in acc:
                p.add_incoming(zero, entry)
            row_b = builder.gep(b0, [builder.mul(k, ldb)])
            bv = [builder.load(builder.bitcast(builder.gep(row_b, [const(v * LANES)]), vptr), align=4) for v in range(VECS)]
            if pack:
                row_p = builder.gep(P.data, [builder.mul(k, const(COLS))])
                for v in range(VECS):
                    builder.store(bv[v], builder.bitcast(builder.gep(row_p, [const(v * LANES)]), vptr), align=4)
            new = []
            for r in range(ROWS):
                x = builder.load(builder.gep(a0, [builder.add(builder.mul(const(r), lda), k)]))
                xs = builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(_I32, 0)), undef, splat)
                new += [builder.call(fma, [xs, bv[v], acc[r * VECS + v]]) for v in range(VECS)]
            k_next = builder.add(k, const(1))
            tail = builder.block
            k.add_incoming(k_next, tail)
            for p, v in zip(acc, new):
                p.add_incoming(v, tail)
            builder.cbranch(builder.icmp_signed("<", k_next, depth), loop, done)

            builder.position_at_end(done)
            totals = []
            for v in new:  # phis first: LLVM wants them at the top of the block
                totals.append(builder.phi(vty))
                totals[-1].add_incoming(zero, entry)
                totals[-1].add_incoming(v, tail)
            for r in range(ROWS):
                row_c = builder.gep(c0, [builder.mul(const(r), ldc)])
                for v in range(VECS):
                    total = totals[r * VECS + v]
                    ptr = builder.bitcast(builder.gep(row_c, [const(v * LANES)]), vptr)
                    old = builder.load(ptr, align=4)
                    builder.store(builder.select(args[6], builder.fadd(old, total), total), ptr, align=4)
            return context.get_dummy_value()

        return types.void(a, b, c, types.intp, types.intp, types.intp, types.boolean, buf), codegen

    return tile


_tile = _tile_intrinsic(pack=False)
_tile_packing = _tile_intrinsic(pack=True)
del _tile_intrinsic  # kernel modules hold Numba functions only (test_registry)


@njit(cache=True, error_model="numpy")
def tiles(a, b, out, add, j_lo, j_hi):
    """out[:m8, j_lo:j_hi] (+)= a[:m8] @ b[:, j_lo:j_hi] for float32 2-D arrays with contiguous rows, m8 the
    rows in whole tiles; j_lo and j_hi - j_lo multiples of COLS. No checks: the caller's (blas.py)."""
    m8 = out.shape[0] // ROWS * ROWS
    buf = np.empty((a.shape[1], COLS), np.float32)
    for j0 in range(j_lo, j_hi, COLS):
        _tile_packing(a, b, out, 0, j0, j0, add, buf)
        for i0 in range(ROWS, m8, ROWS):
            _tile(a, buf, out, i0, 0, j0, add, buf)


# A loop over time steps multiplies by one weight many times: it packs it once, in panels of COLS columns
# ([n // COLS, K, COLS], each panel contiguous), instead of once per product. A thread's 16 rows of an
# LSTM's [32, 256] x [256, 1024] product: 50.9 us with per-call packing, 43.5 from panels packed before.
@njit(cache=True, error_model="numpy")
def pack_panels_into(b, panels):
    """panels[j] = b[:, j * COLS:(j + 1) * COLS] for the panels.shape[0] first whole panels of b."""
    for j in range(panels.shape[0]):
        for kk in range(b.shape[0]):
            for c in range(COLS):
                panels[j, kk, c] = b[kk, j * COLS + c]


@njit(cache=True, error_model="numpy")
def pack_panels_t_into(w, panels):
    """pack_panels_into(w.T, panels), read from w in blocks of 16 columns (a cache line of each row): 93 us
    for a [256, 1024] w, against 345 column by column."""
    k = w.shape[1]
    whole = k // 16 * 16
    for j in range(panels.shape[0]):
        for k0 in range(0, whole, 16):
            for c in range(COLS):
                for kk in range(16):
                    panels[j, k0 + kk, c] = w[j * COLS + c, k0 + kk]
        for kk in range(whole, k):
            for c in range(COLS):
                panels[j, kk, c] = w[j * COLS + c, kk]


@njit(cache=True, error_model="numpy")
def tiles_packed(a, panels, out, add):
    """tiles(a, b, out, add, 0, n // COLS * COLS) for b's panels (pack_panels_into)."""
    m8 = out.shape[0] // ROWS * ROWS
    for j in range(panels.shape[0]):
        panel = panels[j]
        for i0 in range(0, m8, ROWS):
            _tile(a, panel, out, i0, 0, j * COLS, add, panel)
