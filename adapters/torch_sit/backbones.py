"""A small registry of frozen torch backbones (velocity fields) for SideNet training.

A backbone is a callable ``backbone(t, x, **cond) -> v`` with ``t`` a per-sample tensor of shape
``(B,)``, ``x`` a tensor ``(B, *state_shape)`` and ``v`` of x's shape, plus metadata
(:class:`Backbone`): the state shape, the number of classes (None: unconditional), the parameter
count (None: analytic, no parameters), and optionally ``sample_data(n, generator)`` (data samples
at t = 0, for chains that start at a sampled time on the path x_t = (1 - t) x_data + t z).

Registered here: the analytic Gaussian-mixture flows ``"gmm-ring2d"``, ``"gmm-32d"`` and
``"gmm-64d"`` (:mod:`baquad.flows`). A neural backbone (a REPA-SiT, a digits model) registers a
factory with :func:`register_backbone` at import of its module, returning
``Backbone.from_module(...)`` or a :class:`Backbone` whose ``fn`` applies the guidance and label
conditioning, keyed on the same names; so does a binding that lives outside this package (the
diffusers transformer registers ``"diffusers"`` when its module is imported).

Your own model: ``Backbone.from_module(model, name, state_shape)`` wraps a torch module called
``model(t, x, **cond)`` (time first, t in [0, 1] with t = 1 noise), and
``Backbone.from_diffusers_style(model, name, state_shape, timestep_scale=1000)`` one called
``model(sample, timestep)`` with timesteps ``1000 t``; both check the convention with one probe call
at wrap time (docs/own-model.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["Backbone", "CountingBackbone", "register_backbone", "get_backbone", "backbone_names"]


@dataclass
class Backbone:
    """A frozen velocity field with its metadata.

    Attributes:
        name: registry name.
        fn: ``fn(t: Tensor[B], x: Tensor[B, *state_shape], **cond) -> v``.
        state_shape: shape of one state (``(2,)``, ``(4, 32, 32)``, ...).
        num_classes: class-conditional backbones take ``labels=`` in ``cond``; None otherwise.
        num_parameters: parameter count, None for an analytic field.
        module: the torch module behind ``fn`` (moved by :meth:`to`), if any.
        sample_data: ``sample_data(n, generator) -> Tensor[n, *state_shape]`` (float32, CPU),
            exact data samples where the backbone has them.
        cond_dim: the size of the conditioning vector a SideNet for this backbone reads (a text
            backbone's pooled prompt embedding), or None.
        sample_cond: ``sample_cond(n, generator) -> (labels, cond)``: per-sample integer
            conditions for ``fn`` (``labels=``; a text backbone's prompt indices) and their
            conditioning vectors ``(n, cond_dim)`` (float32, CPU; ``cond=``), for backbones
            conditioned on more than a class label.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    state_shape: tuple[int, ...]
    num_classes: Optional[int] = None
    num_parameters: Optional[int] = None
    module: Optional[nn.Module] = None
    sample_data: Optional[Callable[[int, torch.Generator], torch.Tensor]] = None
    extra: dict = field(default_factory=dict)
    cond_dim: Optional[int] = None
    sample_cond: Optional[Callable[[int, torch.Generator], tuple]] = None

    def __call__(self, t: torch.Tensor, x: torch.Tensor, **cond: Any) -> torch.Tensor:
        return self.fn(t, x, **cond)

    def vfield(self, **cond: Any) -> Callable[[float, torch.Tensor], torch.Tensor]:
        """The field in ``baquad.solve``'s form ``vfield(t: float, x)``."""

        def field_(t: float, x: torch.Tensor) -> torch.Tensor:
            return self.fn(torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device), x, **cond)

        return field_

    def to(self, device: Any) -> "Backbone":
        if self.module is not None:
            self.module.to(device)
        return self

    @property
    def analytic(self) -> bool:
        return not self.num_parameters

    def describe_parameters(self) -> str:
        return "analytic" if self.analytic else f"{self.num_parameters:,}"

    @classmethod
    def from_module(cls, module: nn.Module, name: str, state_shape: tuple[int, ...],
                    num_classes: Optional[int] = None, *, probe: bool = True,
                    probe_cond: Optional[dict] = None, **kwargs: Any) -> "Backbone":
        """Wrap a torch velocity model called as ``module(t, x, **cond) -> v``.

        The argument order is time first: ``t`` a ``(B,)`` tensor of flow times in [0, 1]
        (t = 1 noise, t = 0 data), then the state ``x`` of shape ``(B, *state_shape)``; the model
        returns the velocity dx/dt = noise - data with x's shape and dtype. The module is frozen
        (``requires_grad`` False) and put in eval mode.

        Unless ``probe=False``, one probe call checks this at wrap time, under ``no_grad`` on the
        module's device and dtype: ``module(t, x, **cond)`` with B = 2, ``t = (0.75, 0.25)`` and
        ``x`` from ``torch.randn`` (a private generator: the global random state is untouched).
        The probe's ``cond`` is ``probe_cond`` when given, else ``labels = (0, 0)`` (class 0, a
        valid label of every class-conditional model) when ``num_classes`` is set, else nothing.
        An exception, or an output that is not a tensor of x's shape, dtype and device, raises a
        ``ValueError`` naming the ``(t, x)`` order and the time scale (a model with diffusers'
        ``forward(sample, timestep)`` order and 0-1000 timesteps: :meth:`from_diffusers_style`).

        Args:
            module: the velocity model.
            name: the backbone's name (checkpoints and reports carry it).
            state_shape: the shape of one state, without the batch axis.
            num_classes: for a class-conditional model (called with ``labels=``), else None.
            probe: run the wrap-time check (default True).
            probe_cond: the conditioning keywords of the probe call, for a model that needs more
                than ``labels`` (tensors with a batch axis of 2).
            **kwargs: the other :class:`Backbone` fields (``sample_data``, ``extra``, ...).
        """
        return cls._wrap(module, module, name, state_shape, num_classes, probe, probe_cond,
                         "module(t, x, **cond)", **kwargs)

    @classmethod
    def from_diffusers_style(cls, module: nn.Module, name: str, state_shape: tuple[int, ...],
                             num_classes: Optional[int] = None, *, timestep_scale: float = 1000.0,
                             label_keyword: str = "class_labels", probe: bool = True,
                             probe_cond: Optional[dict] = None, **kwargs: Any) -> "Backbone":
        """Wrap a velocity model with diffusers' argument order, ``module(sample, timestep, **cond)``.

        The field is ``v(t, x) = module(x, timestep_scale * t)`` (its ``.sample`` when the model
        returns a diffusers output object, element 0 of a tuple): with the default 1000, a flow
        model trained on timesteps 1000 sigma (Stable Diffusion 3's convention, sigma = t, 1000 =
        noise) is called exactly as its pipeline calls it. Pass ``timestep_scale=1`` for a model
        that takes sigma itself (Flux). The model must predict the flow velocity noise - data;
        a model predicting the noise or the data needs its own conversion (wrap a module that
        returns the velocity with :meth:`from_module`).

        Class labels (the trainer's and sampler's ``labels=``) reach the model as
        ``label_keyword`` (diffusers' ``class_labels``); other keywords pass through unchanged.
        Classifier-free guidance (``guidance_scale=``) is not applied here: wrap a module that
        applies it with :meth:`from_module`. Probe and freezing as :meth:`from_module`.
        """
        scale = float(timestep_scale)
        if isinstance(timestep_scale, bool) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"timestep_scale: must be a finite positive number (1000 for timesteps 1000 t, "
                             f"1 for t itself), got {timestep_scale!r}")

        def fn(t: torch.Tensor, x: torch.Tensor, **cond: Any) -> torch.Tensor:
            if cond.get("guidance_scale") is not None:
                raise TypeError(f"backbone {name!r} (from_diffusers_style): guidance_scale= is not applied by this "
                                "adapter; wrap a module that applies classifier-free guidance with "
                                "Backbone.from_module, or train and sample without guidance")
            cond.pop("guidance_scale", None)
            if "labels" in cond:
                cond[label_keyword] = cond.pop("labels")
            timestep = torch.as_tensor(t, device=x.device).to(x.dtype) * scale
            return _sample_of(module(x, timestep, **cond))

        return cls._wrap(module, fn, name, state_shape, num_classes, probe, probe_cond,
                         f"module(sample=x, timestep={scale:g} * t, **cond)", **kwargs)

    @classmethod
    def _wrap(cls, module: nn.Module, fn: Callable[..., torch.Tensor], name: str, state_shape: tuple[int, ...],
              num_classes: Optional[int], probe: bool, probe_cond: Optional[dict], how: str,
              **kwargs: Any) -> "Backbone":
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        shape = _state_shape(state_shape)
        module.requires_grad_(False).eval()
        n = sum(p.numel() for p in module.parameters())
        bb = cls(name, fn, shape, num_classes, n, module, **kwargs)
        if probe:
            cond = dict(probe_cond) if probe_cond is not None else (
                {} if num_classes is None else {"labels": torch.zeros(_PROBE_BATCH, dtype=torch.long)})
            _probe(bb, cond, how)
        return bb


#: the batch size of the wrap-time probe call
_PROBE_BATCH = 2


def _state_shape(state_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(state_shape)
    except TypeError:
        shape = None
    if not shape or not all(isinstance(s, Integral) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"state_shape: expected the shape of one state without the batch axis, a tuple of "
                         f"positive ints such as (2,) or (4, 32, 32), got {state_shape!r}")
    return tuple(int(s) for s in shape)


def _sample_of(out: Any) -> Any:
    """A diffusers-style model's output as a tensor: ``.sample`` of an output object, element 0
    of a tuple (``return_dict=False``), else the output itself."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return out[0]
    return getattr(out, "sample", out)


def _module_place(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the module's first floating parameter or buffer
    (CPU, float32 for a module without one)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)} on {value.device}"
    return f"a {type(value).__name__}"


def _probe(bb: "Backbone", cond: dict, how: str) -> None:
    """One call of ``bb`` at B = 2 (see :meth:`Backbone.from_module`); raises ValueError with the
    calling convention when it fails."""
    device, dtype = _module_place(bb.module)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((_PROBE_BATCH, *bb.state_shape), generator=gen, dtype=torch.float64).to(device, dtype)
    t = torch.tensor([0.75, 0.25], dtype=dtype, device=device)
    cond = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    expected = _describe(x)
    try:
        with torch.no_grad():
            out = bb.fn(t, x, **cond)
    except Exception as err:  # noqa: BLE001 - any failure is reported with the convention
        raise ValueError(_probe_message(bb, how, f"failed with {type(err).__name__}: {err}", expected, cond)) from err
    if not (isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype and out.device == x.device):
        raise ValueError(_probe_message(bb, how, f"returned {_describe(out)}", expected, cond))


def _probe_message(bb: "Backbone", how: str, what: str, expected: str, cond: dict) -> str:
    cond_text = ", ".join(f"{k}={_describe(v) if isinstance(v, torch.Tensor) else repr(v)}" for k, v in cond.items())
    return (
        f"backbone {bb.name!r}: the wrap-time probe call {how} with t of shape ({_PROBE_BATCH},), x {expected}"
        f"{', ' + cond_text if cond_text else ''} {what}; expected the velocity, {expected}. "
        "A backbone is called TIME FIRST, module(t, x, **cond): t a (B,) tensor of flow times in [0, 1] "
        "(t = 1 noise, t = 0 data), x a (B, *state_shape) state, returning dx/dt = noise - data with x's "
        "shape and dtype. A diffusers-style model, forward(sample, timestep) with timesteps in [0, 1000], "
        "is wrapped with Backbone.from_diffusers_style(module, name, state_shape, timestep_scale=1000). "
        "If the model needs other conditioning for this call, pass probe_cond={...}; probe=False skips the check."
    )


class CountingBackbone:
    """Wraps a backbone and counts its calls (the chain trainer's NFE), recording whether any
    output carried an autograd graph (it never should)."""

    def __init__(self, backbone: Callable[..., torch.Tensor]):
        self.backbone = backbone
        self.calls = 0
        self.any_output_requires_grad = False

    def __call__(self, t: torch.Tensor, x: torch.Tensor, **cond: Any) -> torch.Tensor:
        self.calls += 1
        out = self.backbone(t, x, **cond)
        self.any_output_requires_grad |= bool(out.requires_grad)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backbone, name)


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str, factory: Callable[..., Backbone]) -> None:
    """Register ``factory(**kwargs) -> Backbone`` under ``name``."""
    _REGISTRY[name] = factory


def backbone_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_backbone(name: str, device: Any = "cpu", **kwargs: Any) -> Backbone:
    """Build the registered backbone ``name`` on ``device``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](**kwargs).to(device)


def _analytic_flow(flow_name: str) -> Callable[..., Backbone]:
    def factory(**kwargs: Any) -> Backbone:
        from baquad.flows import get_flow

        flow = get_flow(flow_name, **kwargs)

        def fn(t: torch.Tensor, x: torch.Tensor, **cond: Any) -> torch.Tensor:
            return flow(t, x)

        def sample_data(n: int, generator: torch.Generator) -> torch.Tensor:
            # exact mixture samples driven by the torch generator (reproducible across ranks)
            k = torch.multinomial(torch.tensor(flow.weights), n, replacement=True, generator=generator)
            z = torch.randn(n, flow.dim, generator=generator, dtype=torch.float64)
            mu, s = torch.tensor(flow.means), torch.tensor(flow.stds)
            return (mu[k] + s[k] * z).float()

        return Backbone(flow_name, fn, (flow.dim,), None, None, None, sample_data, {"flow": flow})

    return factory


register_backbone("gmm-ring2d", _analytic_flow("gmm-ring2d"))
register_backbone("gmm-32d", _analytic_flow("gmm-32d"))
register_backbone("gmm-64d", _analytic_flow("gmm-64d"))

