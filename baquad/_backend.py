"""The few array operations the core needs, for numpy arrays and torch tensors alike.

torch is never imported here at module import: a tensor can only reach these functions if the
caller already imported torch, so ``sys.modules["torch"]`` is used.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

Array = Any  # numpy.ndarray or torch.Tensor


def is_torch(x: Array) -> bool:
    """True for a torch tensor (checked without importing torch)."""
    return type(x).__module__.startswith("torch")


def _torch():
    return sys.modules["torch"]


def is_torch_dtype(d: Any) -> bool:
    """True for a torch dtype (checked without importing torch)."""
    return type(d).__module__.startswith("torch")


def is_array(x: Array) -> bool:
    return isinstance(x, np.ndarray) or is_torch(x)


def is_floating(x: Array) -> bool:
    """True if x has a real floating dtype."""
    if is_torch(x):
        return bool(x.dtype.is_floating_point)
    return np.issubdtype(x.dtype, np.floating)


def dtype_kind(x: Array) -> str:
    """The kind of x's dtype: ``"float"`` (real floating), ``"int"`` (signed or unsigned integer),
    ``"bool"``, ``"complex"`` or ``"other"`` (object, string, ...)."""
    if is_torch(x):
        dt = x.dtype
        if dt.is_floating_point:
            return "float"
        if dt.is_complex:
            return "complex"
        if dt == _torch().bool:
            return "bool"
        return "int" if str(dt).startswith(("torch.int", "torch.uint")) else "other"  # not quantized
    dt = np.asarray(x).dtype
    for kind, base in (("float", np.floating), ("int", np.integer), ("bool", np.bool_), ("complex", np.complexfloating)):
        if np.issubdtype(dt, base):
            return kind
    return "other"


def same_array_kind(out: Any, like: Array, dtype: Any) -> bool:
    """True if ``out`` is an array of ``like``'s backend, shape and device, with dtype ``dtype``."""
    return (
        is_array(out)
        and is_torch(out) == is_torch(like)
        and tuple(out.shape) == tuple(like.shape)
        and out.dtype == dtype
        and (not is_torch(out) or out.device == like.device)
    )


def stack(xs: Sequence[Array]) -> Array:
    """Stack along a new leading axis."""
    if is_torch(xs[0]):
        return _torch().stack(list(xs))
    return np.stack(xs)


def broadcast_stack(x: Array, m: int) -> Array:
    """``m`` copies of x along a new leading axis (a view where the backend allows it)."""
    if is_torch(x):
        return x.unsqueeze(0).expand(m, *x.shape)
    return np.broadcast_to(x, (m, *x.shape))


def is_per_sample(t: Any) -> bool:
    """True for per-sample times: an array with at least one dimension (a 0-dim array or tensor is
    one time for the whole batch, like a float)."""
    return is_array(t) and t.ndim >= 1


def per_row(s: Array, like: Array) -> Array:
    """A ``(B,)`` array of per-row scalars reshaped to ``(B, 1, ..., 1)`` to broadcast against
    ``like`` of shape ``(B, ...)``."""
    if tuple(s.shape) != (like.shape[0],):
        raise ValueError(
            f"per-sample times: expected shape ({like.shape[0]},) (one per row of the state), got {tuple(s.shape)}"
        )
    return s.reshape((s.shape[0],) + (1,) * (like.ndim - 1))


def where(cond: Array, a: Array, b: Array) -> Array:
    """Elementwise ``a`` where ``cond`` else ``b`` (broadcasting)."""
    if is_torch(cond) or is_torch(a) or is_torch(b):
        return _torch().where(cond, a, b)
    return np.where(cond, a, b)


def all_finite(x: Array) -> bool:
    """True if every entry is finite (one device sync for a GPU tensor)."""
    if is_torch(x):
        return bool(_torch().isfinite(x).all())
    return bool(np.isfinite(x).all())


def rms(x: Array) -> Array:
    """Root-mean-square over all entries, as a 0-dim array of the input's backend (no sync)."""
    if is_torch(x):
        x = x.detach()
        if x.dtype.itemsize < 4:  # bf16/fp16 states: square in float32 to avoid overflow
            x = x.float()
        return x.pow(2).mean().sqrt()
    return np.sqrt(np.mean(np.square(x, dtype=np.float64)))


def to_numpy(x: Array) -> np.ndarray:
    """A float64 numpy copy of x (detached, on the CPU)."""
    if is_torch(x):
        return x.detach().to("cpu", _torch().float64).numpy()
    return np.asarray(x, dtype=np.float64)


def like(a: np.ndarray, template: Array) -> Array:
    """Convert numpy ``a`` to the array type, dtype and device of ``template``."""
    if is_torch(template):
        return _torch().as_tensor(a, dtype=template.dtype, device=template.device)
    return np.asarray(a, dtype=template.dtype)


def offsets_like(offsets: Sequence[float], template: Array) -> Array:
    """A 1-D array of offsets with the backend, dtype and device of ``template``."""
    return like(np.asarray(offsets, dtype=np.float64), template)


def describe(x: Array) -> str:
    """Short type/shape/dtype description for error messages."""
    if is_array(x):
        kind = "torch.Tensor" if is_torch(x) else "numpy.ndarray"
        return f"{kind} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"
