"""A small registry of frozen torch backbones (velocity fields) for SideNet training.

A backbone is a callable ``backbone(t, x, **cond) -> v`` with ``t`` a per-sample tensor of shape
``(B,)``, ``x`` a tensor ``(B, *state_shape)`` and ``v`` of x's shape, plus metadata
(:class:`Backbone`): the state shape, the number of classes (None: unconditional), the parameter
count (None: analytic, no parameters), and optionally ``sample_data(n, generator)`` (data samples
at t = 0, for chains that start at a sampled time on the path x_t = (1 - t) x_data + t z).

Registered now: the analytic Gaussian-mixture flows ``"gmm-ring2d"`` and ``"gmm-32d"``
(:mod:`baquad.flows`), and ``"diffusers"``, a diffusers SD3/Flux transformer with a file of prompt
embeddings (:mod:`adapters.diffusers_flow.backbone`; options ``model``, ``prompt_embeddings``,
``latent_size``, ``dtype``). A neural backbone (a REPA-SiT, a digits model) registers a factory with
:func:`register_backbone` that returns ``Backbone.from_module(...)`` or a :class:`Backbone` whose
``fn`` applies the guidance and label conditioning, keyed on the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
                    num_classes: Optional[int] = None, **kwargs: Any) -> "Backbone":
        """Wrap a torch module ``module(t, x, **cond) -> v``: frozen (requires_grad False), eval mode."""
        module.requires_grad_(False).eval()
        n = sum(p.numel() for p in module.parameters())
        return cls(name, module, tuple(state_shape), num_classes, n, module, **kwargs)


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


def _diffusers_transformer(**kwargs: Any) -> Backbone:
    """A diffusers pipeline's transformer (SD3, Flux) with a prompt-embedding file; see
    :func:`adapters.diffusers_flow.backbone.load_diffusers_backbone` (diffusers imported here)."""
    from adapters.diffusers_flow.backbone import load_diffusers_backbone

    return load_diffusers_backbone(**kwargs)


register_backbone("diffusers", _diffusers_transformer)
