"""Where the kernels' matrix products go (kernels/blas.py): NumPy's own OpenBLAS when it exports a
64-bit-index CBLAS (NumPy's wheels do), else SciPy's through Numba's helper (`FLUIDLITE_BLAS=scipy`
forces it). `FLUIDLITE_BLAS=onednn` sends float32 products to oneDNN's `dnnl_sgemm` (the optional
`onednn-cpu-gomp` wheel; float64 stays with NumPy's): an LSTM step's small recurrent products run
1.4x faster there, but its OpenMP pool must then be the only BLAS pool working (docs/design.md).
`FLUIDLITE_BLAS=mkl` sends every product to MKL's 64-bit-index CBLAS (the optional `mkl` wheel, on its
own Intel OpenMP threads): 1.1-1.6x faster than OpenBLAS for the benchmarks' shapes on an Intel AVX-512 VM.
Importing this module registers the C symbols `fluidlite_sgemm` / `fluidlite_dgemm` (CBLAS's row-major
signature with 64-bit sizes) with LLVM; kernels call them by name, so a kernel loaded from the disk
cache links to whichever library this process found.
"""
import ctypes
import os

from llvmlite import binding, ir
from numba import cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
SYMBOLS = {"float32": "fluidlite_sgemm", "float64": "fluidlite_dgemm"}
SPLIT_SYMBOL = "fluidlite_split_products"
_I32, _I64 = ir.IntType(32), ir.IntType(64)


def _numpy_cblas():
    """{dtype name: address} of NumPy's 64-bit-index cblas_?gemm, or None. dlsym on NumPy's core module
    searches the libraries it loaded, its BLAS among them."""
    try:
        from numpy._core import _multiarray_umath as core
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as core
    try:
        lib = ctypes.CDLL(core.__file__)
    except OSError:
        return None
    for prefix, suffix in (("scipy_cblas_", "64_"), ("cblas_", "64_")):
        try:
            return {d: ctypes.cast(getattr(lib, f"{prefix}{c}gemm{suffix}"), ctypes.c_void_p).value
                    for d, c in (("float32", "s"), ("float64", "d"))}
        except AttributeError:
            continue
    return None


@intrinsic
def _colmajor_gemm(typingctx, kind, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Numba's own helper for SciPy's BLAS (column-major; alpha and beta passed by pointer)."""
    def codegen(context, builder, sig, args):
        char, vp = ir.IntType(8), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(_I32, [char, char, char, _I64, _I64, _I64, vp, vp, _I64, vp, _I64, vp, vp, _I64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        al, be = (builder.alloca(args[i].type) for i in (6, 11))
        builder.store(args[6], al)
        builder.store(args[11], be)
        ints = [builder.sext(args[i], _I64) if args[i].type.width < 64 else args[i] for i in (3, 4, 5, 8, 10, 13)]
        chars = [builder.trunc(args[i], char) for i in (0, 1, 2)]
        builder.call(fn, chars + ints[:3] + [builder.bitcast(al, vp), builder.bitcast(args[7], vp), ints[3],
                                             builder.bitcast(args[9], vp), ints[4], builder.bitcast(be, vp),
                                             builder.bitcast(args[12], vp), ints[5]])
        return context.get_dummy_value()

    return types.void(kind, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), codegen


def _shim(kind):
    def shim(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        _colmajor_gemm(kind, ord("t") if tb == TRANS else ord("n"), ord("t") if ta == TRANS else ord("n"),
                       n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)
    return shim


def _scipy_shims():
    """{dtype name: address} of CBLAS-signature functions forwarding to SciPy's BLAS (row-major C = op(A) op(B)
    is column-major C^T = op(B)^T op(A)^T)."""
    import scipy.linalg.cython_blas  # noqa: F401  (Numba's helper finds its functions through this module)

    out = {}
    for name, dt, kind in (("float32", types.float32, ord("s")), ("float64", types.float64, ord("d"))):
        p = types.CPointer(dt)
        sig = types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64, dt, p,
                         types.int64, p, types.int64, dt, p, types.int64)
        compiled = cfunc(sig)(_shim(kind))
        out[name] = compiled.address
        _keep.append(compiled)
    return out


@intrinsic
def _dnnl_sgemm(typingctx, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """dnnl_sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc): row-major, 64-bit sizes."""
    def codegen(context, builder, sig, args):
        char, f32 = ir.IntType(8), ir.FloatType()
        fp = f32.as_pointer()
        fnty = ir.FunctionType(_I32, [char, char, _I64, _I64, _I64, f32, fp, _I64, fp, _I64, f32, fp, _I64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "dnnl_sgemm")
        builder.call(fn, [builder.trunc(args[0], char), builder.trunc(args[1], char)] + list(args[2:]))
        return context.get_dummy_value()

    return types.void(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), codegen


def _dnnl_shim(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    _dnnl_sgemm(ord("T") if ta == TRANS else ord("N"), ord("T") if tb == TRANS else ord("N"),
                m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


def _prefix_library(pattern):
    """The path of a library a wheel put in this environment's lib/ (sys.prefix/lib), or None."""
    import glob
    import sys

    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", pattern)))
    return found[0] if found else None


def onednn_library():
    """The path of oneDNN's library (the `onednn-cpu-gomp` wheel), or None."""
    return _prefix_library("libdnnl.so.*")


def mkl_library():
    """The path of MKL's single dynamic library (the `mkl` wheel), or None."""
    return _prefix_library("libmkl_rt.so*")


def _open(choice, path, package, why):
    """A ctypes handle of `path`, or an ImportError naming FLUIDLITE_BLAS=choice and what to install."""
    if path is None:
        raise ImportError(f"FLUIDLITE_BLAS={choice}: its library is not in this environment; pip install {package} "
                          "(or unset FLUIDLITE_BLAS)")
    try:
        return ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(f"FLUIDLITE_BLAS={choice}: {path} does not load ({e}); {why}") from e


def _onednn_sgemm():
    """The address of a CBLAS-signature float32 function forwarding to oneDNN's dnnl_sgemm."""
    lib = _open("onednn", onednn_library(), "onednn-cpu-gomp", "it needs the system's libgomp (apt-get install libgomp1)")
    binding.add_symbol("dnnl_sgemm", ctypes.cast(lib.dnnl_sgemm, ctypes.c_void_p).value)
    p = types.CPointer(types.float32)
    compiled = cfunc(types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64,
                                types.float32, p, types.int64, p, types.int64, types.float32, p, types.int64))(_dnnl_shim)
    _keep.extend((lib, compiled))
    return compiled.address


def _mkl_cblas():
    """{dtype name: address} of MKL's 64-bit-index cblas_?gemm_64 (MKL's default threading: Intel OpenMP;
    choosing another layer would change it for every MKL user of the process)."""
    lib = _open("mkl", mkl_library(), "mkl", "pip install 'mkl>=2023'")
    try:
        addresses = {d: ctypes.cast(getattr(lib, f"cblas_{c}gemm_64"), ctypes.c_void_p).value
                     for d, c in (("float32", "s"), ("float64", "d"))}
    except AttributeError as e:  # an MKL older than 2023 has no 64-bit-index CBLAS symbols
        raise ImportError(f"FLUIDLITE_BLAS=mkl: {e}; pip install 'mkl>=2023'") from e
    _keep.append(lib)
    return addresses


# The bands a large product is split into while the BLAS runs one thread (fluidlite/_threads.py); 0: none.
# A C global: kernels/blas.gemm reads it at every call, so cached kernels see this process's value.
_split = ctypes.c_int32(0)


_keep = []  # the shims' compiled code must outlive this module's import
BACKEND = "numpy"
_CHOICE = os.environ.get("FLUIDLITE_BLAS", "")
if _CHOICE not in ("", "numpy", "scipy", "onednn", "mkl"):
    raise ImportError(f"FLUIDLITE_BLAS={_CHOICE!r}: choose numpy, scipy, onednn or mkl (or leave it unset)")
_addresses = None if _CHOICE in ("scipy", "mkl") else _numpy_cblas()
if _CHOICE == "mkl":
    BACKEND, _addresses = "mkl", _mkl_cblas()
elif _addresses is None:
    BACKEND, _addresses = "scipy", _scipy_shims()
FLOAT32 = BACKEND  # the library float32 products go to: BACKEND's, or oneDNN
if _CHOICE == "onednn":
    FLOAT32, _addresses = "onednn", dict(_addresses, float32=_onednn_sgemm())
for _dtype, _address in _addresses.items():
    binding.add_symbol(SYMBOLS[_dtype], _address)
binding.add_symbol(SPLIT_SYMBOL, ctypes.addressof(_split))


def split_products(parts: int | None = None) -> int:
    """Bands the kernels split a large product into, over Numba's threads (0: whole, BLAS threads it); `parts` sets it."""
    if parts is not None:
        _split.value = max(0, int(parts))
    return _split.value


