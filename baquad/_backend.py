"""The few array operations the core needs, for numpy arrays and torch tensors alike.

torch is never imported here at module import: a tensor can only reach these functions if the
caller already imported torch, so ``sys.modules["torch"]`` is used. The functions dispatch on
their argument's type; :class:`Ops` adds what needs a target backend, dtype and device (creating
arrays from Python numbers, casting results back), for the analytic flows.
"""

from __future__ import annotations

import math
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


def stack(xs: Sequence[Array], axis: int = 0) -> Array:
    """Stack along a new axis (leading by default)."""
    if is_torch(xs[0]):
        return _torch().stack(list(xs), dim=axis)
    return np.stack(xs, axis=axis)


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
    """True if every entry is finite (one device sync for a GPU tensor).

    On torch, two operations in the common case: a finite sum(x) means every entry is finite
    (one NaN or inf makes the sum NaN or inf). Only when it is not, because of a non-finite entry
    or because large finite entries overflowed the sum, sum(0 * x) decides: 0 when every entry
    is finite, NaN as soon as one is not (0 * inf is NaN)."""
    if is_torch(x):
        return math.isfinite(x.sum().item()) or x.mul(0).sum().item() == 0
    return bool(np.isfinite(x).all())


def norm_of_difference(a: Array, b: Array) -> Array:
    """|a - b|_2 over all entries, detached, as a 0-dim array of the inputs' backend (no sync).

    float32/float64 tensors of one shape: ``torch.dist(a, b)``, one kernel. bfloat16/float16
    tensors: the difference's norm accumulated in float32 (no overflow). numpy: in float64.
    """
    if not isinstance(a, np.ndarray):
        if a.dtype is b.dtype and a.dtype.itemsize >= 4 and a.shape == b.shape:
            out = _torch().dist(a, b)
        else:
            out = _torch().linalg.vector_norm(a - b, dtype=_torch().promote_types(a.dtype, _torch().float32))
        return out.detach() if out.requires_grad else out
    return np.sqrt(np.sum(np.square(a - b, dtype=np.float64)))


def size(x: Array) -> int:
    """The number of entries of an array."""
    return x.size if isinstance(x, np.ndarray) else x.numel()


def unbind(x: Array) -> tuple:
    """The slices ``x[0], x[1], ...`` along the leading axis, as views (one operation on torch)."""
    return x.unbind(0) if is_torch(x) else tuple(x)


def add_scaled(x: Array, h: Any, coeffs: Sequence[Any], arrays: Sequence[Array]) -> Array:
    """``x + h * sum_j c_j a_j`` (``coeffs`` c_j, ``arrays`` a_j): a quadrature update.

    ``h`` a host number (a float, or a numpy scalar) and the c_j Python floats: every term is one
    multiply-add with the coefficient h c_j as a Python float, so nothing is created from host
    data. On torch the first is ``torch.add(x, a_0, alpha=h c_0)`` and the others add in place
    into that fresh result (autograd records them like out-of-place adds); on numpy
    ``x + (h c_0) a_0 + (h c_1) a_1 + ...``.

    ``h`` an array (a 0-dim time that carries gradients, or per-sample steps of shape ``(B,)``,
    broadcast over the rows of x with :func:`per_row`): ``x + h * (c_0 a_0 + c_1 a_1 + ...)``,
    with c_j floats or arrays; so is any c_j an array (learned weights that carry gradients:
    ``x + h * (...)``). With no terms, x itself.
    """
    if not arrays:
        return x
    if type(h) is not float or not all(type(c) is float for c in coeffs):
        if is_array(h) or any(is_array(c) for c in coeffs):
            hx = per_row(h, x) if h.ndim else h
            total = coeffs[0] * arrays[0]
            for c, a in zip(coeffs[1:], arrays[1:]):
                total = total + c * a
            return x + hx * total
        h = float(h)
    if not isinstance(x, np.ndarray):
        torch = _torch()
        out = torch.add(x, arrays[0], alpha=float(h * coeffs[0]))
        for c, a in zip(coeffs[1:], arrays[1:]):
            if a.dtype is out.dtype:
                out.add_(a, alpha=float(h * c))
            else:  # another dtype (a direct call with a field of another precision): promote
                out = torch.add(out, a, alpha=float(h * c))
        return out
    out = x + float(h * coeffs[0]) * arrays[0]
    for c, a in zip(coeffs[1:], arrays[1:]):
        out = out + float(h * c) * a
    return out


def host_floats(xs: Sequence[Array]) -> list[float]:
    """0-dim arrays of one backend, dtype and device as Python floats, in one transfer (one
    host sync for GPU tensors, and one operation: the stack)."""
    if is_torch(xs[0]):
        return _torch().stack(list(xs)).tolist()
    return [float(a) for a in xs]


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


# ---------------------------------------------------------------------------------------------
# elementwise and reduction math (the analytic flows)


def exp(a: Array) -> Array:
    return _torch().exp(a) if is_torch(a) else np.exp(a)


def log(a: Array) -> Array:
    return _torch().log(a) if is_torch(a) else np.log(a)


def cos(a: Array) -> Array:
    return _torch().cos(a) if is_torch(a) else np.cos(a)


def sin(a: Array) -> Array:
    return _torch().sin(a) if is_torch(a) else np.sin(a)


def logsumexp(a: Array, axis: int) -> Array:
    """``log(sum(exp(a)))`` along ``axis``, without overflow."""
    if is_torch(a):
        return _torch().logsumexp(a, dim=axis)
    from scipy.special import logsumexp as np_logsumexp

    return np_logsumexp(a, axis=axis)


def softmax(a: Array, axis: int) -> Array:
    """``exp(a - logsumexp(a))`` along ``axis``: never overflows, the weights sum to 1."""
    if is_torch(a):
        return _torch().softmax(a, dim=axis)
    m = np.max(a, axis=axis, keepdims=True)
    e = np.exp(a - m)
    return e / np.sum(e, axis=axis, keepdims=True)


class Ops:
    """The compute backend, dtype and device of one input ``like``.

    Computations run in float64 for numpy inputs, and for torch inputs in float64 (float64 input)
    or float32 (any other dtype) on the input's device; :meth:`out` casts a result back to the
    input's dtype (a non-floating numpy input gives float64).
    """

    def __init__(self, like: Array) -> None:
        self.torch = is_torch(like)
        if self.torch:
            torch = _torch()
            self.out_dtype = like.dtype
            self.device = like.device
            self.dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        else:
            arr = np.asarray(like)
            self.out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
            self.device = None
            self.dtype = np.float64

    def asarray(self, v: Any) -> Array:
        """``v`` (number, numpy array or tensor) in this backend's compute dtype and device."""
        if self.torch:
            if is_torch(v):
                return v.to(dtype=self.dtype, device=self.device)
            return _torch().as_tensor(np.array(v, dtype=np.float64), dtype=self.dtype, device=self.device)
        if is_torch(v):
            v = v.detach().cpu().numpy()
        return np.asarray(v, dtype=np.float64)

    def out(self, v: Array) -> Array:
        """A computed result cast back to the input's dtype (and device)."""
        if self.torch:
            return v.to(dtype=self.out_dtype, device=self.device)
        return np.asarray(v, dtype=self.out_dtype)

    def ones(self, shape: tuple[int, ...]) -> Array:
        if self.torch:
            return _torch().ones(shape, dtype=self.dtype, device=self.device)
        return np.ones(shape, dtype=np.float64)


def batch_time(ops: Ops, t: Any, x: Array) -> Array:
    """Time ``t`` as an array that broadcasts against ``x`` of shape ``(*batch, d)``.

    ``t`` may be a Python number, a 0-dim array/tensor, or a per-sample array/tensor of shape
    ``batch`` (e.g. ``(B,)`` for ``x`` of shape ``(B, d)``); a per-sample ``t`` is returned with a
    trailing axis of length 1, so ``t * x`` multiplies row-wise.
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
