"""Tolerances counted in units in the last place (ulps) of a dtype.

Two arithmetic paths that agree in exact arithmetic (a batched forward against single-row
forwards, another summation order, another kernel, a formula written out in a test) agree in
floating point only up to rounding, and how the rounding falls differs from machine to machine.
Their comparison needs a tolerance derived from the dtype and the magnitudes involved, written as
a formula, never one machine's measured difference; :func:`ulps` is that formula. Bitwise
comparisons are kept for what the code promises (the same arithmetic on the same numbers: a
resume, a copy, a value passed through), each with a comment naming the promise.

Imported as ``_ulps`` (tests/ is on the path, like ``_tiny_image``); needs numpy only, torch only
for torch dtypes.
"""

from __future__ import annotations

import numpy as np

#: how far, in ulps of the largest magnitude of its output, a float32 network forward may move
#: when only the batch shape changes (batched and single-row matmuls take different kernels with
#: different summation orders). Measured 0 to 3.3 on one CPU (tests/test_repa_backbone.py,
#: tests/test_sidenet.py); 16 leaves room for other kernels without hiding a real difference,
#: which is orders of magnitude larger.
NETWORK_ULPS = 16


def eps(dtype) -> float:
    """One ulp at magnitude 1 (machine epsilon) of a numpy or torch floating dtype:
    2**-23 for float32, 2**-52 for float64, 2**-7 for bfloat16."""
    if type(dtype).__module__ == "torch":
        import torch

        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def magnitude(*values) -> float:
    """The largest absolute value among numbers, arrays and tensors."""
    biggest = 0.0
    for value in values:
        if hasattr(value, "detach"):
            value = value.detach().abs().max().item() if value.numel() else 0.0
        value = np.abs(np.asarray(value, dtype=np.float64))
        if value.size:
            biggest = max(biggest, float(value.max()))
    return biggest


def ulps(n: float, dtype, *values) -> float:
    """``n`` ulps of ``dtype`` at the largest magnitude among ``values``, as an absolute
    tolerance (``eps * |v|`` bounds the ulp of every number of size at most ``|v|``)."""
    return n * eps(dtype) * magnitude(*values)
