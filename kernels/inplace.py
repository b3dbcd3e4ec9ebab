"""In-place calls: a kernel whose output may be one of its inputs checks for it with `same_buffer`.

LLVM vectorizes a loop over several arrays only after a run-time check that they do not overlap. An
in-place call (`sgd(p, g, lr, p)`, as plans make every update) fails that check, so the loop ran
scalar: 3.4x slower for sgd on 1M float32. So such kernels branch on `same_buffer` and, in place,
pass the one array for both roles: LLVM then sees one pointer and has nothing to check. Both branches
run the same inlined per-element function, so they give the same bits.
"""
from numba import njit


@njit(cache=True, error_model="numpy", inline="always")
def same_buffer(a, b):
    """Do arrays `a` and `b` start at the same address (an in-place call passes one array twice)?"""
    return a.ctypes.data == b.ctypes.data
