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
at wrap time (docs/own-model.md): the argument order, the output's shape, dtype and finiteness in
the caller's state dtype, that the input is left unmodified, the labels, and (a warning) whether
the output responds to t at the time scale given.
"""

from __future__ import annotations

import math
import warnings
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
                    probe_cond: Optional[dict] = None, state_dtype: torch.dtype = torch.float32,
                    **kwargs: Any) -> "Backbone":
        """Wrap a torch velocity model called as ``module(t, x, **cond) -> v``.

        The argument order is time first: ``t`` a ``(B,)`` tensor of flow times in [0, 1]
        (t = 1 noise, t = 0 data), then the state ``x`` of shape ``(B, *state_shape)``; the model
        returns the velocity dx/dt = noise - data with x's shape and dtype. The module is frozen
        (``requires_grad`` False) and put in eval mode.

        Unless ``probe=False``, one probe call checks this at wrap time, under ``no_grad`` on the
        module's device and in ``state_dtype`` (the dtype the caller's states have):
        ``module(t, x, **cond)`` with B = 2, ``t = (0.9, 0.1)`` and the same state ``x`` (from
        ``torch.randn``, a private generator: the global random state is untouched) in both rows.
        The probe's ``cond`` is ``probe_cond`` when given, else ``labels = (0, 0)`` (class 0, a
        valid label of every class-conditional model) when ``num_classes`` is set, else nothing.
        It raises a ``ValueError`` that names the fix when

        - the call raises, or the output is not a tensor of x's shape, dtype and device (the
          message names the ``(t, x)`` order and the time scale; a model with diffusers'
          ``forward(sample, timestep)`` order and 0-1000 timesteps: :meth:`from_diffusers_style`);
          when the model works in its own dtype but not in ``state_dtype`` (a float16 model given
          float32 noise), a second call in the model's dtype tells, and the message names both
          dtypes and the fixes (cast inside the model, or ``state_dtype=`` and
          ``baquad.solve(..., field_dtype=)``);
        - the output is not finite (NaN or inf from finite noise);
        - the model wrote into its input ``x`` or ``t`` (compared with copies taken before the
          call): it would corrupt the caller's noise;
        - ``probe_cond``'s labels are not integers of shape (2,) in [0, num_classes).

        It WARNS (``UserWarning``; the backbone is still returned) when the output barely changes
        between t = 0.9 and t = 0.1 for the same state (relative change below
        ``TIME_RESPONSE_WARNING``, 1e-3): the model seems to expect times on another scale (a
        model trained on timesteps 0-1000 given t in [0, 1]); a second call at 1000 t says whether
        it responds there. A model whose output is exactly zero (a zero-initialised network) is
        not judged.

        Every later call with ``labels=`` checks them too (integers, one per sample or one for the
        batch, in [0, num_classes) or the backbone's ``extra["null_class"]``), with a
        ``ValueError`` naming ``labels`` and ``num_classes`` instead of torch's index error.

        Args:
            module: the velocity model.
            name: the backbone's name (checkpoints and reports carry it).
            state_shape: the shape of one state, without the batch axis.
            num_classes: for a class-conditional model (called with ``labels=``), else None.
            probe: run the wrap-time check (default True).
            probe_cond: the conditioning keywords of the probe call, for a model that needs more
                than ``labels`` (tensors with a batch axis of 2).
            state_dtype: the dtype of the states the backbone will be called with (float32, the
                default, is what the SideNet trainer and the samplers pass; torch.float64 for a
                float64 reference solve); the probe runs in it.
            **kwargs: the other :class:`Backbone` fields (``sample_data``, ``extra``, ...).
        """
        def at_1000(t: torch.Tensor, x: torch.Tensor, **cond: Any) -> torch.Tensor:
            return module(1000.0 * t, x, **cond)

        scale_fix = ("from_module calls module(t, x) with t in [0, 1]; for a model trained on timesteps 0-1000, wrap a "
                     "module whose forward calls model(1000 * t, x) (a model with forward(sample, timestep): "
                     "Backbone.from_diffusers_style(model, name, state_shape, timestep_scale=1000))")
        return cls._wrap(module, module, name, state_shape, num_classes, probe, probe_cond,
                         "module(t, x, **cond)", state_dtype, (at_1000, "t scaled by 1000", scale_fix), **kwargs)

    @classmethod
    def from_diffusers_style(cls, module: nn.Module, name: str, state_shape: tuple[int, ...],
                             num_classes: Optional[int] = None, *, timestep_scale: float = 1000.0,
                             label_keyword: str = "class_labels", probe: bool = True,
                             probe_cond: Optional[dict] = None, state_dtype: torch.dtype = torch.float32,
                             **kwargs: Any) -> "Backbone":
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
        applies it with :meth:`from_module`. Probe, ``state_dtype`` and freezing as
        :meth:`from_module`; when the probe's output barely responds to t, a second call at the
        other usual scale (1 for a scale of 100 or more, else 1000) says which ``timestep_scale``
        the model seems to expect (a warning).
        """
        scale = float(timestep_scale)
        if isinstance(timestep_scale, bool) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"timestep_scale: must be a finite positive number (1000 for timesteps 1000 t, "
                             f"1 for t itself), got {timestep_scale!r}")

        def at_scale(factor: float) -> Callable[..., torch.Tensor]:
            def fn(t: torch.Tensor, x: torch.Tensor, **cond: Any) -> torch.Tensor:
                if cond.get("guidance_scale") is not None:
                    raise TypeError(f"backbone {name!r} (from_diffusers_style): guidance_scale= is not applied by "
                                    "this adapter; wrap a module that applies classifier-free guidance with "
                                    "Backbone.from_module, or train and sample without guidance")
                cond.pop("guidance_scale", None)
                if "labels" in cond:
                    cond[label_keyword] = cond.pop("labels")
                timestep = torch.as_tensor(t, device=x.device).to(x.dtype) * factor
                return _sample_of(module(x, timestep, **cond))

            return fn

        other = 1.0 if scale >= 100 else 1000.0
        scale_fix = (f"pass timestep_scale={other:g} to Backbone.from_diffusers_style (now {scale:g}: the model is "
                     f"called with timesteps {scale:g} t)")
        return cls._wrap(module, at_scale(scale), name, state_shape, num_classes, probe, probe_cond,
                         f"module(sample=x, timestep={scale:g} * t, **cond)", state_dtype,
                         (at_scale(other), f"timestep_scale={other:g}", scale_fix), **kwargs)

    @classmethod
    def _wrap(cls, module: nn.Module, fn: Callable[..., torch.Tensor], name: str, state_shape: tuple[int, ...],
              num_classes: Optional[int], probe: bool, probe_cond: Optional[dict], how: str,
              state_dtype: torch.dtype, other_scale: tuple, **kwargs: Any) -> "Backbone":
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        shape = _state_shape(state_shape)
        if not (isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point):
            raise ValueError(f"state_dtype: expected a floating torch dtype (the dtype of the states the backbone "
                             f"is called with, e.g. torch.float32), got {state_dtype!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, Integral)
                                        or num_classes < 1):
            raise ValueError(f"num_classes: expected None (unconditional) or a positive int, got {num_classes!r}")
        module.requires_grad_(False).eval()
        n = sum(p.numel() for p in module.parameters())
        null = (kwargs.get("extra") or {}).get("null_class")
        bb = cls(name, _checking_labels(fn, name, num_classes, null), shape, num_classes, n, module, **kwargs)
        if probe:
            cond = dict(probe_cond) if probe_cond is not None else (
                {} if num_classes is None else {"labels": torch.zeros(_PROBE_BATCH, dtype=torch.long)})
            _probe(bb, cond, how, state_dtype, other_scale)
        return bb


#: the batch size of the wrap-time probe call
_PROBE_BATCH = 2
#: the probe's two times (the same state at both): far apart, so a velocity model's output differs
_PROBE_TIMES = (0.9, 0.1)
#: below this relative change of the output between the probe's two times, the wrapper warns that
#: the model seems to expect another time scale. A model whose time input spans 0-1000 sees 0.9 and
#: 0.1 as nearly the same time (a saturating or linear time embedding changes by 1e-4 or less); the
#: models of this repository respond with 2e-3 (a random-weight SiT) to 0.6 (the trained digits SiT)
TIME_RESPONSE_WARNING = 1e-3


def _check_labels(name: str, labels: Any, batch: int, num_classes: Optional[int], null_class: Optional[int]) -> None:
    """Refuse labels a class-conditional backbone cannot embed, naming ``labels`` and
    ``num_classes`` (instead of torch's index error inside the model)."""
    if labels is None or num_classes is None:  # without num_classes, labels= is the model's own business
        return
    valid = f"[0, {num_classes - 1}]" + ("" if null_class is None else f" or the null class {null_class}")
    if isinstance(labels, bool) or not isinstance(labels, (Integral, torch.Tensor)):
        raise ValueError(f"labels: backbone {name!r} takes integer class labels in {valid} (num_classes = "
                         f"{num_classes}), one per sample; got {_describe(labels)}")
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels: backbone {name!r} takes integer class labels (num_classes = {num_classes}); "
                             f"got {labels.dtype}; pass labels.long()")
        if labels.ndim > 1 or (labels.ndim == 1 and labels.shape[0] != batch):
            raise ValueError(f"labels: expected one label per sample, shape ({batch},) for a batch of {batch} states "
                             f"(or one label for the whole batch), got shape {tuple(labels.shape)}")
        if labels.numel() == 0:
            return
        low, high = int(labels.min()), int(labels.max())
    else:
        low = high = int(labels)
    for value in (low, high):
        if not (0 <= value < num_classes or value == null_class):
            raise ValueError(f"labels: backbone {name!r} has num_classes = {num_classes}, so labels must be in "
                             f"{valid}; got {value}")


def _checking_labels(fn: Callable[..., torch.Tensor], name: str, num_classes: Optional[int],
                     null_class: Optional[int]) -> Callable[..., torch.Tensor]:
    """``fn`` with its ``labels=`` checked by :func:`_check_labels`. A labels tensor already
    checked and not written since (the same object at the same version, as in every step of one
    solve) is not read again, so the check costs one device read per new labels tensor."""
    if num_classes is None:
        return fn
    checked: list = [None, -1]

    def field(t: torch.Tensor, x: torch.Tensor, **cond: Any) -> torch.Tensor:
        labels = cond.get("labels")
        if labels is not None and not (labels is checked[0] and getattr(labels, "_version", 0) == checked[1]):
            _check_labels(name, labels, x.shape[0], num_classes, null_class)
            if isinstance(labels, torch.Tensor):
                checked[:] = [labels, labels._version]
        return fn(t, x, **cond)

    return field


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


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    """|a - b| / max(|a|, |b|) in float64, or None when both are zero (nothing to judge)."""
    a, b = a.detach().double(), b.detach().double()
    size = max(float(a.norm()), float(b.norm()))
    return None if size == 0.0 else float((a - b).norm()) / size


def _probe(bb: "Backbone", cond: dict, how: str, dtype: torch.dtype, other_scale: tuple) -> None:
    """The wrap-time checks of :meth:`Backbone.from_module` (one call at B = 2 in ``dtype``; a
    second only to explain a failure or a weak response to t). Raises ValueError naming the
    convention and the fix; warns about the time scale."""
    device, model_dtype = _module_place(bb.module)
    if "labels" in cond:
        _check_labels(bb.name, cond["labels"], _PROBE_BATCH, bb.num_classes, (bb.extra or {}).get("null_class"))
    cond = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    gen = torch.Generator().manual_seed(0)
    row = torch.randn((1, *bb.state_shape), generator=gen, dtype=torch.float64)

    def call(fn: Callable[..., torch.Tensor], dt: torch.dtype) -> tuple:
        x = row.expand(_PROBE_BATCH, *bb.state_shape).to(device, dt).contiguous()
        t = torch.tensor(_PROBE_TIMES, dtype=dt, device=device)
        x_before, t_before = x.clone(), t.clone()
        with torch.no_grad():
            out = fn(t, x, **dict(cond))
        return x, t, out, not (torch.equal(x, x_before) and torch.equal(t, t_before))

    def fits(out: Any, x: torch.Tensor) -> bool:
        return isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype and out.device == x.device

    def works_in_model_dtype() -> bool:
        if model_dtype == dtype:
            return False
        try:
            x, _, out, _ = call(bb.fn, model_dtype)
        except Exception:  # noqa: BLE001 - it fails in its own dtype too: the general message says why
            return False
        return fits(out, x)

    expected = _describe(row.expand(_PROBE_BATCH, *bb.state_shape).to(device, dtype))
    try:
        x, t, out, wrote = call(bb.fn, dtype)
    except Exception as err:  # noqa: BLE001 - any failure is reported with the convention
        if works_in_model_dtype():
            raise ValueError(_dtype_message(bb, dtype, model_dtype, f"failed with {type(err).__name__}: {err}")) from err
        raise ValueError(_probe_message(bb, how, f"failed with {type(err).__name__}: {err}", expected, cond)) from err
    if not fits(out, x):
        if works_in_model_dtype():
            raise ValueError(_dtype_message(bb, dtype, model_dtype, f"returned {_describe(out)}"))
        raise ValueError(_probe_message(bb, how, f"returned {_describe(out)}", expected, cond))
    if wrote:
        raise ValueError(
            f"backbone {bb.name!r}: the wrap-time probe call {how} wrote into its input (x or t changed during the "
            "call): it would overwrite the caller's noise and states. Make the forward leave its inputs alone: replace "
            "in-place operations on them (x.mul_(...), x += ..., x[...] = ...) by out-of-place ones, or start the "
            "forward with x = x.clone()")
    bad = ~torch.isfinite(out.detach()).reshape(_PROBE_BATCH, -1)
    if bool(bad.any()):
        raise ValueError(
            f"backbone {bb.name!r}: the wrap-time probe call {how} returned non-finite values ({int(bad.sum())} of "
            f"{bad.numel()} are NaN or inf) for finite noise x in {dtype} at t = {_PROBE_TIMES}; training or sampling "
            "would stop at the first step. Check the weights (a checkpoint that did not load, an uninitialised "
            "tensor), the time scale, and the dtype (float16 overflows past 65504: try state_dtype=torch.float32 "
            "with the model in float32)")
    _check_time_response(bb, out, how, lambda: call(other_scale[0], dtype)[2], *other_scale[1:])


def _check_time_response(bb: "Backbone", out: torch.Tensor, how: str, at_other_scale: Callable[[], Any],
                         other: str, fix: str) -> None:
    """Warn when the probe's output (the same state at t = 0.9 and t = 0.1) barely changes: a
    velocity field depends on t, so the model likely expects its time on another scale. One call
    at the other scale says which."""
    change = _relative_change(out[0], out[1])
    if change is None or change >= TIME_RESPONSE_WARNING:
        return
    try:
        alt = at_other_scale()
        alt_change = _relative_change(alt[0], alt[1]) if isinstance(alt, torch.Tensor) and alt.shape == out.shape else None
    except Exception:  # noqa: BLE001 - the other scale is only a hint
        alt_change = None
    if alt_change is not None and alt_change >= TIME_RESPONSE_WARNING:
        seems = (f"called with {other} its output does change (relative change {alt_change:.2g}), so the model seems "
                 f"to expect {other}: {fix}")
    else:
        seems = (f"it barely responds with {other} either, so the model may ignore t; check how it embeds the time "
                 f"({fix})")
    warnings.warn(
        f"backbone {bb.name!r}: the wrap-time probe {how} gave nearly the same output at t = {_PROBE_TIMES[0]} and "
        f"t = {_PROBE_TIMES[1]} for the same state (relative change {change:.2g} < {TIME_RESPONSE_WARNING:g}); a "
        f"velocity field depends on t. {seems}. If this is intended, ignore this warning (probe=False skips the "
        "probe)", UserWarning, stacklevel=4)


def _dtype_message(bb: "Backbone", dtype: torch.dtype, model_dtype: torch.dtype, what: str) -> str:
    return (
        f"backbone {bb.name!r}: the wrap-time probe with {dtype} states {what}, but works with {model_dtype} states: "
        f"the model computes in {model_dtype} and needs its input in that dtype. The SideNet trainer and the samplers "
        f"call the backbone with {dtype} states (state_dtype={dtype}). Fix: cast inside the model's forward "
        f"(x.to({model_dtype}) on the way in, .to(x.dtype) on the way out), or convert the model (model.to({dtype})); "
        f"or, if you solve with {model_dtype} states yourself, pass state_dtype={model_dtype} and "
        f"baquad.solve(..., field_dtype={model_dtype})"
    )


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

