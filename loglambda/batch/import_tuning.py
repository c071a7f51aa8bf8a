"""Process settings for ``loglambda import``, applied before Arrow and numpy load.

A bulk import streams gigabytes through short-lived buffers for a few seconds, then
exits. The defaults of the libraries underneath suit long-lived processes. For this
workload they cost about a third of its CPU time, measured with ``perf`` on
bench/import_bench.py:

- mimalloc, Arrow's allocator, hands freed memory back to the kernel after 10 ms, so
  every block after that faults it in again, zeroed. ``MIMALLOC_PURGE_DELAY=-1``
  keeps it for reuse; the memory goes back when the process exits.
- Transparent huge pages make a fault zero 2 MiB at a time, even for buffers that
  are mostly never touched. ``PR_SET_THP_DISABLE`` opts this one process out.
- OpenBLAS, under numpy, starts a thread per core that spins after load. An import
  does no linear algebra.
- pyarrow imports pandas (0.16 s, a tenth of a 2M-line import) the first time
  ``pa.array`` or ``pa.scalar`` runs, only to ask whether its argument is a pandas
  object. An import never hands pyarrow pandas objects, so that first question is
  answered with pandas unavailable. A later ``to_pandas()`` still imports it: pyarrow
  retries whenever pandas is actually needed.
- Python's cyclic collector would walk every object of the loaded libraries on each
  full collection. ``gc.freeze()`` moves them out of its way.

Long-running commands (serve, speed) keep the defaults: there, memory given back
matters more than a fault saved.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.abc
import os
import sys

_PR_SET_THP_DISABLE = 41


def before_libraries_load() -> None:
    """Allocator and thread settings: call before anything imports pyarrow or numpy."""
    if "pyarrow" not in sys.modules:
        os.environ.setdefault("MIMALLOC_PURGE_DELAY", "-1")
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if sys.platform == "linux":
        # Not glibc, or an old kernel: then only slower.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)
    if "pandas" not in sys.modules:
        _answer_pyarrows_pandas_probe()


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"{name} is hidden from pyarrow's probe", name=name)


def _answer_pyarrows_pandas_probe() -> None:
    import pyarrow as pa

    hide = _NoPandas()
    sys.meta_path.insert(0, hide)
    try:
        pa.scalar(0)
    finally:
        sys.meta_path.remove(hide)


def after_libraries_load() -> None:
    """Take everything loaded so far out of the cyclic collector's full passes."""
    gc.freeze()
