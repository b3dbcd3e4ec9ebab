"""The kernels' disk cache follows every kernel file: after an edit to kernels/blas.py, a kernel of
another file that calls it runs the new code, not the copy its cache entry holds."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np

import fluidlite
from fluidlite import _kernel_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fluidlite.__file__)))
# A fresh process importing the copy at sys.argv[1] (not the installed package: an editable install's
# finder would send fluidlite.kernels to the checkout), multiplying with a kernel of kernels/basic.py.
PROBE = textwrap.dedent("""
    import sys
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import fluidlite
    from fluidlite.kernels import basic
    assert basic.__file__.startswith(sys.argv[1]), basic.__file__
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    print(float(basic.matmul2d(a, a.T)[0, 0]))
""")


def _copy_package(dest):
    for name in ("fluidlite", "kernels"):
        shutil.copytree(os.path.join(ROOT, name), os.path.join(dest, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))


def _run(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FLUIDLITE_CACHE_DIR=str(tmp_path / "fl"))
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "pkg")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return float(out.stdout.strip().splitlines()[-1])


def test_an_edit_to_blas_reaches_a_cached_kernel_of_another_file(tmp_path):
    _copy_package(tmp_path / "pkg")
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    want = float((a @ a.T)[0, 0])
    assert _run(tmp_path) == want  # compiles and caches basic.matmul2d with blas's product in it
    blas = tmp_path / "pkg" / "kernels" / "blas.py"
    text = blas.read_text()
    old = "_any_layout(out), np.float64(alpha)"
    assert old in text
    blas.write_text(text.replace(old, old.replace("np.float64(alpha)", "np.float64(2 * alpha)")))
    assert _run(tmp_path) == 2 * want  # basic.py did not change; its cached kernel must not be reused


def test_every_kernel_file_is_in_the_stamp():
    names = {n for n in os.listdir(os.path.join(ROOT, "kernels")) if n.endswith(".py")}
    assert {name for name, _, _ in _kernel_cache.sources_stamp()} == names | {"_blas.py"}
    from fluidlite.kernels import basic

    locator = basic.matmul2d._cache._impl.locator
    assert isinstance(locator, _kernel_cache.KernelsLocator)
    assert locator.get_source_stamp()[1] == _kernel_cache.sources_stamp()
