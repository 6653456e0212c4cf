"""Tiny numpy/torch dispatch used by the analytic flows.

torch is never imported at module import time: a tensor is recognised by the module
of its type (``type(x).__module__.startswith("torch")``) and torch is imported lazily
the first time one is seen. Computations run in float64 for numpy inputs and in
float64 (float64 input) or float32 (any other input) for torch inputs; results are
cast back to the input's dtype and device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import logsumexp as _np_logsumexp

from .._backend import is_torch

Array = Any  # numpy.ndarray or torch.Tensor


class Ops:
    """Elementwise/reduction operations for one array type, dtype and device."""

    def __init__(self, like: Array) -> None:
        self.torch = is_torch(like)
        if self.torch:
            import torch

            self._t = torch
            self.out_dtype = like.dtype
            self.device = like.device
            self.dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        else:
            arr = np.asarray(like)
            self.out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
            self.device = None
            self.dtype = np.float64

    # conversion -----------------------------------------------------------------
    def asarray(self, v: Any) -> Array:
        """``v`` (number, numpy array or tensor) in this backend's compute dtype."""
        if self.torch:
            t = self._t
            if is_torch(v):
                return v.to(dtype=self.dtype, device=self.device)
            return t.as_tensor(np.array(v, dtype=np.float64), dtype=self.dtype, device=self.device)
        if is_torch(v):
            v = v.detach().cpu().numpy()
        return np.asarray(v, dtype=np.float64)

    def out(self, v: Array) -> Array:
        """Cast a computed result back to the input's dtype (and device)."""
        if self.torch:
            return v.to(dtype=self.out_dtype, device=self.device)
        return np.asarray(v, dtype=self.out_dtype)

    # math -----------------------------------------------------------------------
    def exp(self, a: Array) -> Array:
        return self._t.exp(a) if self.torch else np.exp(a)

    def log(self, a: Array) -> Array:
        return self._t.log(a) if self.torch else np.log(a)

    def cos(self, a: Array) -> Array:
        return self._t.cos(a) if self.torch else np.cos(a)

    def sin(self, a: Array) -> Array:
        return self._t.sin(a) if self.torch else np.sin(a)

    def logsumexp(self, a: Array, axis: int) -> Array:
        return self._t.logsumexp(a, dim=axis) if self.torch else _np_logsumexp(a, axis=axis)

    def softmax(self, a: Array, axis: int) -> Array:
        """exp(a - logsumexp(a)) along ``axis``: never overflows, weights sum to 1."""
        if self.torch:
            return self._t.softmax(a, dim=axis)
        m = np.max(a, axis=axis, keepdims=True)
        e = np.exp(a - m)
        return e / np.sum(e, axis=axis, keepdims=True)

    def stack(self, parts: list[Array], axis: int) -> Array:
        return self._t.stack(parts, dim=axis) if self.torch else np.stack(parts, axis=axis)

    def ones(self, shape: tuple[int, ...]) -> Array:
        if self.torch:
            return self._t.ones(shape, dtype=self.dtype, device=self.device)
        return np.ones(shape, dtype=np.float64)


def batch_time(ops: Ops, t: Any, x: Array) -> Array:
    """Time ``t`` as an array that broadcasts against ``x`` of shape ``(*batch, d)``.

    ``t`` may be a Python number, a 0-dim array/tensor, or a per-sample array/tensor of
    shape ``batch`` (e.g. ``(B,)`` for ``x`` of shape ``(B, d)``); a per-sample ``t`` is
    returned with a trailing axis of length 1, so ``t * x`` multiplies row-wise.
    """
    ta = ops.asarray(t)
    batch = tuple(x.shape[:-1])
    if ta.ndim == 0:
        return ta
    if tuple(ta.shape) == batch:
        return ta[..., None]
    if int(np.prod(tuple(ta.shape))) == 1:
        return ta.reshape(())
    raise ValueError(
        f"t must be a scalar or have the batch shape {batch} of x (x.shape = "
        f"{tuple(x.shape)}), got t.shape = {tuple(ta.shape)}"
    )
