"""The learned perception: a torch SideNet behind the ``baquad.perception.Perception`` contract.

For an anchor (x, v, t) and offsets d_1..d_m (true time, either sign) it returns

    v_hat(t + d_k) = v + d_k * g(x, v, t, d_k),   k = 1..m                         (Eq. 5)

or, for a SideNet trained as a residual on a training-free perception P0 (its config's
``base_perception``, e.g. the anchor polynomial), v_hat(t + d_k) = P0(t + d_k) + d_k g, so that
a zero SideNet output is exactly P0.

stacked as ``(m, *x.shape)`` in x's dtype and device, with ONE SideNet forward per call: the m
offsets are stacked along the batch dimension (x and v repeated m times, t repeated, d constant
per block of B rows), which is what makes a whole quadrature rule cost one network call
(paper Eq. 7, docs/algorithm.md#perception).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

from baquad.perception import Anchor, Perception, get_perception, history_size

from .networks import host_values, per_sample

__all__ = ["NeuralPerception", "check_sidenet_state"]


class NeuralPerception(Perception):
    """Perception from a SideNet ``g = sidenet(x, v, t, d, labels, guidance[, cond=])``.

    Args:
        sidenet: an :class:`~adapters.torch_sit.sidenet.networks.MLPSideNet`, a
            :class:`~adapters.torch_sit.sidenet.networks.ConvSideNet` or any module with that forward.
        labels: class labels of the batch (shape ``(B,)``) for a class-conditional SideNet; None
            uses its null label.
        guidance_scale: the classifier-free guidance scale, for a SideNet conditioned on it (one
            number, or a ``(B,)`` tensor of per-sample scales).
        strict: refuse labels or a guidance scale the SideNet does not take (a likely mistake); False
            drops them silently, for callers that hold the backbone's conditioning and pass it on
            whatever the SideNet takes (the chain trainer, the sampler).
        cond: per-sample conditioning vectors ``(B, cond_dim)`` (or one ``(cond_dim,)`` for the
            whole batch) for a SideNet built with ``cond_dim``; None passes nothing, so SideNets
            whose forward has no ``cond`` argument keep working.
        grad: build the autograd graph (False: the forward runs under ``torch.no_grad()``).
        autocast: None (the SideNet runs in its parameters' dtype), or ``torch.bfloat16`` /
            ``torch.float16``: the SideNet's forward runs under that autocast on its device, as a
            backbone run in low precision does (the sampler passes the backbone's); g comes back
            in x's dtype either way.

    The SideNet runs on its own device and dtype (inputs are moved there and g comes back to x's
    device and dtype). ``t`` may be a Python float (as ``baquad.solve`` passes it), a 0-dim tensor
    or a per-sample tensor of shape ``(B,)``, and ``offsets`` a sequence of m floats or, with
    per-sample times (chain training through the core step), a tensor of shape ``(m, B)``.
    ``history`` goes to the base perception (the SideNet itself reads only the anchor).
    ``calls`` counts forwards.
    """

    per_sample_times = True

    def __init__(self, sidenet: nn.Module, labels: Optional[torch.Tensor] = None,
                 guidance_scale: Optional[float] = None, grad: bool = False, cond: Optional[torch.Tensor] = None,
                 strict: bool = True, autocast: Optional[torch.dtype] = None):
        if not isinstance(sidenet, nn.Module):
            raise TypeError(f"NeuralPerception: sidenet must be a SideNet (a torch.nn.Module), got {type(sidenet).__name__}")
        config = sidenet.config() if callable(getattr(sidenet, "config", None)) else {}
        takes_labels = not config or config.get("num_classes") is not None
        takes_guidance = not config or bool(config.get("guidance", False))
        if strict and labels is not None and not takes_labels:
            raise ValueError("NeuralPerception: labels were given but this SideNet is not class-conditional "
                             "(num_classes None); drop labels=, or train a SideNet with num_classes")
        if strict and guidance_scale is not None and not takes_guidance:
            raise ValueError("NeuralPerception: guidance_scale was given but this SideNet is not conditioned on the "
                             "guidance scale (guidance False); drop guidance_scale=, or train one with --sidenet-guidance")
        labels = labels if takes_labels else None
        guidance_scale = guidance_scale if takes_guidance else None
        self.sidenet = sidenet
        self.labels = labels
        self.guidance_scale = guidance_scale
        self.cond = cond
        self.grad = grad
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ValueError(f"NeuralPerception: autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")
        self.autocast = autocast
        self.calls = 0
        name = getattr(sidenet, "base_perception", "anchor-only")
        self.base = None if name == "anchor-only" else get_perception(name)

    @property
    def grid(self) -> Any:
        """The grid spec saved with the SideNet (``set_sidenet_grid``), or None: what
        ``baquad.schedules.default_grid`` samples this perception on."""
        return getattr(self.sidenet, "sampling_grid", None)

    @property
    def learned_steps(self) -> Optional[dict]:  # type: ignore[override]
        """The learned per-interval weights saved with the SideNet, by number of intervals
        (``python -m adapters.torch_sit.learned.ba``), or None: BA-solver uses them on exactly
        their grids (:mod:`baquad.solvers.learned_steps`)."""
        return getattr(self.sidenet, "learned_steps", None)

    @property
    def history_size(self) -> int:
        return 1 if self.base is None else history_size(self.base)

    def _param_like(self) -> torch.Tensor:
        for p in self.sidenet.parameters():
            return p
        raise ValueError("NeuralPerception: the SideNet has no parameters (cannot tell its device/dtype)")

    def __call__(self, x: torch.Tensor, v: torch.Tensor, t: Any, offsets: Any,
                 history: Sequence[Anchor] = ()) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not isinstance(v, torch.Tensor):
            raise TypeError("NeuralPerception: x and v must be torch tensors (a numpy state needs a numpy perception)")
        if x.ndim < 1:
            raise ValueError("NeuralPerception: the state needs a leading batch dimension")
        m, n = len(offsets), x.shape[0]
        p = self._param_like()
        dev, dt = p.device, p.dtype
        xs = x.to(dev, dt).unsqueeze(0).expand(m, *x.shape).reshape(m * n, *x.shape[1:])
        vs = v.to(dev, dt).unsqueeze(0).expand(m, *v.shape).reshape(m * n, *v.shape[1:])
        rows = dict(blocks=m, device=dev)  # m stacked copies of the batch, one per offset
        ts = per_sample(t, n, dtype=dt, what="NeuralPerception: t", **rows)
        if isinstance(offsets, torch.Tensor):  # per-sample offsets (m, B): row j is offset j of every sample
            if tuple(offsets.shape) != (m, n):
                raise ValueError(f"NeuralPerception: per-sample offsets must have shape (m, {n}), got {tuple(offsets.shape)}")
            ds = offsets.to(dev, dt).reshape(-1)
            d = offsets.to(x.device, x.dtype).reshape(m, n, *([1] * (x.ndim - 1)))
        elif any(isinstance(o, torch.Tensor) for o in offsets):  # 0-dim tensor offsets (a learned grid): keep their graph
            dvec = torch.stack([torch.as_tensor(o, device=dev, dtype=dt).reshape(()) for o in offsets])
            ds = dvec[:, None].expand(m, n).reshape(-1)
            d = dvec.to(x.device, x.dtype).reshape(m, *([1] * x.ndim))
        else:  # made on the device (host_values): a copy from the host would sync a GPU
            ds = host_values(offsets, device=dev, dtype=dt)[:, None].expand(m, n).reshape(-1)
            d = host_values(offsets, device=x.device, dtype=x.dtype).reshape(m, *([1] * x.ndim))
        labels = per_sample(self.labels, n, dtype=torch.long, what="NeuralPerception: labels", **rows)
        guidance = per_sample(self.guidance_scale, n, dtype=dt, what="NeuralPerception: guidance_scale", **rows)
        cond = per_sample(self.cond, n, dtype=dt, item_ndim=1, what="NeuralPerception: cond", **rows)
        extra = {} if cond is None else {"cond": cond}
        low = torch.autocast(dev.type, dtype=self.autocast) if self.autocast is not None else contextlib.nullcontext()
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()), low:
            g = self.sidenet(xs, vs, ts, ds, labels, guidance, **extra)
        self.calls += 1
        g = g.reshape(m, *x.shape).to(x.device, x.dtype)
        base = v.unsqueeze(0) if self.base is None else self.base(x, v, t, offsets, history)
        return base + d * g

    def __repr__(self) -> str:
        on = "" if self.base is None else f" on {self.base!r}"
        return f"NeuralPerception({type(self.sidenet).__name__}{on})"


def _shape_text(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def check_sidenet_state(sidenet: Any, state_shape: Sequence[int], where: str) -> None:
    """Check that ``sidenet`` reads states of shape ``state_shape`` before any network runs.

    ``state_shape`` is the shape of a batch of states, batch first: ``(B, dim)`` for a vector
    flow, ``(B, C, H, W)`` for images and latents, ``(B, N, D)`` for packed tokens. What each
    SideNet reads, from its ``config()`` (docs/algorithm.md#the-sidenet-architecture):

    - ``MLPSideNet(dim)``: any ``(B, *shape)`` with prod(shape) = dim (it flattens each sample);
    - ``ConvSideNet(in_channels)``: ``(B, C, H, W)`` with C = in_channels, any H and W;
    - ``TokenSideNet(token_dim)``: ``(B, N, D)`` with D = token_dim, any N.

    A module without a ``config()`` naming one of these classes is not checked (its own forward
    is the only judge).

    Args:
        sidenet: the SideNet (or anything with ``config()``).
        state_shape: the states' shape, batch dimension first.
        where: who asks, as the user knows it (e.g. ``"--sidenet runs/ring/sidenet.safetensors"``);
            every message starts with it.

    Raises:
        ValueError: the SideNet was built for states of another shape, naming ``where``, both
            shapes and the fix (a SideNet trained on these states).
    """
    shape = tuple(int(n) for n in state_shape)
    if len(shape) < 2:
        raise ValueError(f"{where}: state_shape must be a batch shape (B, ...), batch first, got {_shape_text(shape)}")
    config = sidenet.config() if callable(getattr(sidenet, "config", None)) else {}
    kind = config.get("class") if isinstance(config, dict) else None
    sample, per_sample_size = shape[1:], math.prod(shape[1:])
    states = f"the states here have shape {_shape_text(('B',) + sample)}"
    fix = "pass a SideNet trained on states of this shape (by the backbone that produces them)"
    if kind == "MLPSideNet":
        dim = int(config["dim"])
        if per_sample_size != dim:
            raise ValueError(f"{where}: this is an MLPSideNet for states of {dim} number(s) per sample (dim = {dim}), "
                             f"but {states}, {per_sample_size} per sample; {fix}")
    elif kind == "ConvSideNet":
        channels = int(config["in_channels"])
        if len(sample) != 3 or sample[0] != channels:
            raise ValueError(f"{where}: this is a ConvSideNet for image states (B, {channels}, H, W) "
                             f"(in_channels = {channels}), but {states}; {fix}")
    elif kind == "TokenSideNet":
        token_dim = int(config["token_dim"])
        if len(sample) != 2 or sample[1] != token_dim:
            raise ValueError(f"{where}: this is a TokenSideNet for token states (B, N, {token_dim}) "
                             f"(token_dim = {token_dim}), but {states}; {fix}")
