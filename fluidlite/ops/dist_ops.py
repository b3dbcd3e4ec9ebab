"""allreduce: sums or averages a bucket of gradients over the MPI workers (fluidlite.distributed).

One op per bucket; its kernel is plain Python (no Numba): it packs the bucket's arrays into one
contiguous buffer, calls mpi4py's non-blocking buffer `Iallreduce` in place on it with a deadline,
and hands out views of the buffer. `Out` names the same variables as `X` (the gradients are replaced
in place), so every later op - clips first - reads the averaged gradient.
"""
from ..registry import NO_GRAD, Attr, defop

REDUCES = ("sum", "mean")


def _infer(ctx):
    dtype = ctx.expect_dtype("X")
    if ctx.has("Weight") and ctx.attrs["batch_axis"] >= len(ctx.shape("Weight")):
        raise ctx.error(f"batch_axis {ctx.attrs['batch_axis']} is not an axis of Weight", "Weight")
    return {"Out": [(m.shape, dtype) for m in ctx.metas("X")]}


def _lower(ctx):
    from ..distributed.comm import reduce_bucket

    n = len(ctx.metas("X"))
    reduce, axis, weighted = ctx.attrs["reduce"], ctx.attrs["batch_axis"], ctx.has("Weight")

    def run(*arrays):
        weight = arrays[n].shape[axis] if weighted else 1
        out = reduce_bucket(arrays[:n], reduce, weight)
        return out[0] if n == 1 else tuple(out)

    return run


defop("allreduce", inputs=("X", "Weight"), outputs=("Out",), duplicable={"X", "Out"}, optional={"Weight"},
      attrs={"reduce": Attr(str, "mean", lambda v: None if v in REDUCES else f"must be one of {REDUCES}"),
             "batch_axis": Attr(int, 0, lambda v: None if v >= 0 else "must be >= 0"),
             "bucket": Attr(int, 0)},
      infer=_infer, lower=_lower, grad=NO_GRAD,
      doc="Out[i] = the sum over workers of X[i] (reduce='sum'), or its mean weighted by each worker's "
          "Weight.shape[batch_axis] (reduce='mean' with Weight: exact for a mean loss over uneven shards), "
          "or the plain mean of the workers' values (reduce='mean' without Weight).")
