"""``BASolverScheduler``: BA-solver as a diffusers scheduler for flow-matching pipelines.

A diffusers pipeline (Stable Diffusion 3, Flux, their img2img variants) runs a fixed loop: for
each entry of ``scheduler.timesteps`` it calls its transformer once, combines classifier-free
guidance, and hands the velocity to ``scheduler.step``, which returns the next latents. This
scheduler integrates each interval [sigma_i, sigma_{i+1}] of that loop with BA-solver at the
same single backbone call per step, using a trained SideNet (or a training-free perception) for
the velocities between anchors.

Schedule. The class derives from ``FlowMatchEulerDiscreteScheduler`` and keeps its sigmas, its
``shift`` and dynamic shifting (``mu``), ``set_begin_index`` and ``scale_noise`` (img2img),
unchanged, so it drops in wherever that scheduler is used and, with a SideNet whose output is
zero, reproduces it step for step. Two of that schedule's habits matter for a SideNet trained on
particular grids: sigmas passed to ``set_timesteps`` are shifted again by ``shift``, and the
default grid shifts its last nonzero sigma twice. A grid saved with the SideNet
(:mod:`adapters.diffusers_flow.grid`) therefore replaces the pipeline's schedule verbatim (no
shift, no ``mu``) when it has one for the requested number of steps
(``use_sidenet_grid=False`` keeps the pipeline's).

The step. Time is sigma (1 noise, 0 data) and the model output is the velocity dx/dsigma, as in
``baquad``. All quadrature arithmetic is the core's, :class:`baquad.bianchor.BiAnchorSolver`:

- ``anchors="single"`` (default): the step is the core's single-anchor interval from the anchor
  (x_i, sigma_i, v_i) the pipeline just computed, x_{i+1} = x_i + h sum_k w_k v_hat(sigma_i + c_k h)
  with the perception's forward probe, h = sigma_{i+1} - sigma_i. One backbone call per step.
- ``anchors="bi"``: the bi-anchor interval in the lagged predictor/corrector shape of UniPC.
  Step i returns the predictor x~_{i+1} of the next interval; the pipeline evaluates
  v_{i+1} = f(x~_{i+1}, sigma_{i+1}); step i + 1 first corrects interval i with that terminal
  anchor (backward probe from (x~_{i+1}, v_{i+1}), the core's corrector), then predicts interval
  i + 1 from the corrected state with v_{i+1} as its start anchor (which was evaluated at x~, not
  at the corrected state: the algorithm's anchor reuse). The last interval is single-anchor (it
  would need one more call), so N steps cost N calls and the result equals ``baquad.solve(...,
  anchors="bi", final="single")`` on the same grid. The latents a pipeline sees between steps
  are predictors; the corrector's state is internal. If the latents handed to ``step`` are not
  the ones it returned (a ``callback_on_step_end`` changed them), the pending correction is
  dropped and the given latents are taken as they are.

The predictor/corrector gap of each corrected interval (a free local error indicator) is kept
in ``scheduler.gaps``.

Computation runs in float32 (or the sample's dtype if wider); the returned latents have the
model output's dtype, as the Euler scheduler's. The SideNet is held by the scheduler, which a
pipeline's ``.to(device)`` does not move: ``step`` moves it to the sample's device and dtype.

Conditioning. A SideNet built with ``cond_dim`` reads the pooled prompt embedding, and one built
with ``guidance=True`` the guidance scale; the pipeline does not pass these to a scheduler.
``scheduler.bind(pipe)`` registers a forward pre-hook on ``pipe.transformer`` that records the
``pooled_projections`` of the first transformer call after each step (with batched
classifier-free guidance, SD3's layout, the batch is [negative, positive] and the positive half
is used) and reads ``pipe.guidance_scale``; ``scheduler.set_condition(cond=..., guidance_scale=...)``
sets them explicitly instead (for Flux with ``true_cfg_scale``, pass that scale).

Flux hands ``step`` packed latents ``(B, N, 4 C)``: use a :class:`~adapters.torch_sit.sidenet.networks.TokenSideNet`
(trained on the packed state, as the chain trainer's Flux backbone produces it); it needs no
image size. SD3 latents ``(B, C, H, W)`` take a ConvSideNet.

Refusals. ``set_timesteps`` takes what ``FlowMatchEulerDiscreteScheduler`` takes, with the same
meaning: ``num_inference_steps=0`` gives its empty schedule (no timesteps, the pipeline makes no
step), kept as diffusers defines it; a negative, fractional or boolean count, or neither a count
nor ``sigmas``/``timesteps``, is refused with a ``ValueError`` naming ``num_inference_steps``
(diffusers would raise numpy's or Python's error). ``step`` refuses a ``timestep`` that is not
in ``scheduler.timesteps`` (diffusers: an IndexError), latents for which the SideNet was not
built (``check_sidenet_state``: another channel count or size), and NaN/inf: in the latents or
the model output it is given, or in the latents it would return, with a ``FloatingPointError``
naming the step and sigma as ``baquad.solve`` does (the Euler scheduler passes NaN on silently).

Saving. The SideNet's architecture is in the config (``sidenet_config``, with its grid in
``sidenet_grid``) and its weights in ``sidenet.safetensors`` beside ``scheduler_config.json``;
``save_pretrained``/``from_pretrained`` (the scheduler's and the pipeline's) write and read both,
and a weights file whose architecture or grid differs from the config is refused.
"""

from __future__ import annotations

import json
import os
import weakref
from numbers import Integral
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SchedulerMixin  # noqa: F401  (re-exported for the loader)
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from safetensors import safe_open
from torch import nn

from adapters.torch_sit.sidenet.checkpoint import ArchitectureMismatch, check_architecture, load_sidenet, save_sidenet
from adapters.torch_sit.sidenet.perception import NeuralPerception, check_sidenet_state
from baquad.bianchor import BiAnchorSolver, BiAnchorState, Prediction, push_anchor
from baquad.perception import Anchor, get_perception, history_size
from baquad.rules import get_rule

from .grid import check_grid_spec, describe, grid_for_steps

__all__ = ["BASolverScheduler", "SIDENET_WEIGHTS_NAME", "SchedulerMixin"]

SIDENET_WEIGHTS_NAME = "sidenet.safetensors"
_ANCHORS = ("single", "bi")


def _read_sidenet_file(path: Path) -> tuple[nn.Module, Any]:
    """The SideNet module of a baquad SideNet file (or training checkpoint) and its saved grid."""
    net = load_sidenet(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {}).get("baquad", "{}"))
    grid = meta.get("extra", {}).get("grid", meta.get("grid"))
    return net, check_grid_spec(grid, where=f"{path}: saved grid")


class BASolverScheduler(FlowMatchEulerDiscreteScheduler):
    """BA-solver scheduler for diffusers flow-matching pipelines (see the module docstring).

    Args:
        num_train_timesteps ... time_shift_type: the ``FlowMatchEulerDiscreteScheduler`` settings,
            with its defaults; ``from_config(pipe.scheduler.config, sidenet=...)`` takes them from
            the pipeline's scheduler. ``invert_sigmas`` and ``stochastic_sampling`` are refused
            (BA-solver integrates the probability-flow ODE from noise to data).
        rule: the quadrature rule (default Gauss-Lobatto-4, the paper's).
        anchors: ``"single"`` (default) or ``"bi"`` (lagged predictor/corrector).
        perception: without a SideNet, a training-free perception: ``"anchor-only"`` (default; with
            it the single-anchor step is exactly Euler's) or ``"polynomial"`` (Lagrange
            extrapolation through the anchors of earlier steps).
        sidenet_config: the architecture of the SideNet (``sidenet.config()``); set when a SideNet
            is attached, checked when one is loaded.
        sidenet_grid: the grid saved with the SideNet (see :mod:`adapters.diffusers_flow.grid`).
        use_sidenet_grid: replace the pipeline's sigmas by the SideNet's grid when it has one
            for the requested number of steps.
        sidenet: a SideNet module or the path of a SideNet file (``sidenet.safetensors`` of
            ``python -m adapters.torch_sit.train``); not part of the JSON config.
    """

    _compatibles = ["FlowMatchEulerDiscreteScheduler"]
    order = 1
    ignore_for_config = ["sidenet"]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: Optional[float] = 0.5,
        max_shift: Optional[float] = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: Optional[float] = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
        rule: str = "gauss-lobatto-4",
        anchors: str = "single",
        perception: Optional[str] = None,
        sidenet_config: Optional[dict] = None,
        sidenet_grid: Any = None,
        use_sidenet_grid: bool = True,
        sidenet: Union[nn.Module, str, os.PathLike, None] = None,
    ):
        if invert_sigmas:
            raise ValueError("invert_sigmas: BASolverScheduler integrates from noise (sigma 1) to data (sigma 0); "
                             "set invert_sigmas=False")
        if stochastic_sampling:
            raise ValueError("stochastic_sampling: BA-solver integrates the deterministic flow ODE; set "
                             "stochastic_sampling=False")
        if anchors not in _ANCHORS:
            raise ValueError(f"anchors: must be 'single' or 'bi', got {anchors!r}")
        get_rule(rule).check_unit_interval("rule")
        if perception is not None and perception not in ("anchor-only", "polynomial"):
            raise ValueError(f"perception: 'anchor-only', 'polynomial' or None (a SideNet's), got {perception!r}")
        check_grid_spec(sidenet_grid, where="sidenet_grid")
        base_init = getattr(FlowMatchEulerDiscreteScheduler.__init__, "__wrapped__", FlowMatchEulerDiscreteScheduler.__init__)
        base_init(self, num_train_timesteps=num_train_timesteps, shift=shift, use_dynamic_shifting=use_dynamic_shifting,
                  base_shift=base_shift, max_shift=max_shift, base_image_seq_len=base_image_seq_len,
                  max_image_seq_len=max_image_seq_len, invert_sigmas=invert_sigmas, shift_terminal=shift_terminal,
                  use_karras_sigmas=use_karras_sigmas, use_exponential_sigmas=use_exponential_sigmas,
                  use_beta_sigmas=use_beta_sigmas, time_shift_type=time_shift_type,
                  stochastic_sampling=stochastic_sampling)
        self.sidenet: Optional[nn.Module] = None
        self._cond: Optional[torch.Tensor] = None
        self._guidance_scale: Optional[float] = None
        self._pipe = None
        self._hook = None
        self._captured: Optional[torch.Tensor] = None
        self._capture_open = True
        self._grid_text: Optional[str] = None
        self._reset_solver_state()
        if sidenet is not None:  # (with only a sidenet_config, from_pretrained attaches the weights)
            self._attach(sidenet, check=sidenet_config is not None)

    # ------------------------------------------------------------------------------------
    # the SideNet

    def set_sidenet(self, sidenet: Union[nn.Module, str, os.PathLike, None], grid: Any = None) -> "BASolverScheduler":
        """Attach a SideNet (module or file path; None detaches) and record its architecture and
        grid in the config. A file's saved grid is used unless ``grid`` is given."""
        if sidenet is None:
            self.sidenet = None
            self.register_to_config(sidenet_config=None, sidenet_grid=None)
            return self
        self._attach(sidenet, check=False, grid=grid)
        return self

    def _attach(self, sidenet: Any, check: bool, grid: Any = None) -> None:
        saved_grid = None
        if isinstance(sidenet, (str, os.PathLike)):
            sidenet, saved_grid = _read_sidenet_file(Path(sidenet))
        if not isinstance(sidenet, nn.Module) or not callable(getattr(sidenet, "config", None)):
            raise TypeError(f"sidenet: expected a SideNet module (with .config()) or a SideNet file path, got "
                            f"{type(sidenet).__name__}")
        if self.config.perception is not None:
            raise ValueError(f"perception={self.config.perception!r} and a SideNet were both given; the SideNet is the "
                             "perception: leave perception=None")
        grid = check_grid_spec(grid if grid is not None else saved_grid, where="sidenet grid")
        if check:
            self._check_against_config(sidenet.config(), grid, "the SideNet")
        self.sidenet = sidenet.eval().requires_grad_(False)
        self.register_to_config(sidenet_config=sidenet.config(), sidenet_grid=grid)

    def _check_against_config(self, arch: dict, grid: Any, what: str) -> None:
        expected = self.config.sidenet_config
        if expected is None:
            raise ArchitectureMismatch(
                f"{what} cannot be attached: this scheduler's config declares no SideNet (sidenet_config is null). "
                "Use set_sidenet(...) to attach one to a scheduler configured without it.")
        check_architecture(arch, dict(expected), where=f"{what} (against scheduler_config.json's sidenet_config)")
        expected_grid = check_grid_spec(self.config.sidenet_grid, where="sidenet_grid")
        if grid != expected_grid:
            raise ArchitectureMismatch(
                f"{what} carries the grid {grid!r} but scheduler_config.json's sidenet_grid is {expected_grid!r}; "
                "save the scheduler again with this SideNet (set_sidenet + save_pretrained) or use the matching file")

    # ------------------------------------------------------------------------------------
    # conditioning

    def bind(self, pipe: Any) -> "BASolverScheduler":
        """Read the SideNet's conditioning from ``pipe`` while it runs: the pooled prompt embedding
        of the first transformer call after each step (a forward pre-hook on ``pipe.transformer``)
        and ``pipe.guidance_scale``. Returns the scheduler (``pipe.scheduler = s.bind(pipe)``)."""
        transformer = getattr(pipe, "transformer", None)
        if not isinstance(transformer, nn.Module):
            raise TypeError("bind: the pipeline has no transformer module to read the pooled prompt embedding from")
        self.unbind()
        self._pipe = weakref.ref(pipe)
        self._hook = transformer.register_forward_pre_hook(self._capture, with_kwargs=True)
        return self

    def unbind(self) -> None:
        """Remove the hook of :meth:`bind`."""
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._pipe, self._captured = None, None, None

    def _capture(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._capture_open:
            pooled = kwargs.get("pooled_projections")
            self._captured = None if pooled is None else pooled.detach()
            self._capture_open = False

    def set_condition(self, cond: Optional[torch.Tensor] = None, guidance_scale: Optional[float] = None) -> None:
        """Set the SideNet's conditioning explicitly: ``cond`` the per-sample conditioning vectors
        ``(B, cond_dim)`` (one ``(cond_dim,)`` for the batch), ``guidance_scale`` a float. They
        take precedence over what :meth:`bind` reads; None clears each."""
        self._cond = cond
        self._guidance_scale = None if guidance_scale is None else float(guidance_scale)

    def _condition(self, batch: int) -> tuple[Optional[torch.Tensor], Optional[float]]:
        arch = self.config.sidenet_config or {}
        cond = guidance = None
        if arch.get("cond_dim"):
            cond = self._cond if self._cond is not None else self._captured
            if cond is None:
                raise ValueError(
                    "this SideNet is conditioned on the pooled prompt embedding (cond_dim = "
                    f"{arch['cond_dim']}): call scheduler.bind(pipe) once before sampling, or "
                    "scheduler.set_condition(cond=pooled_prompt_embeds)")
            if cond.ndim == 2 and cond.shape[0] == 2 * batch and self._cond is None:
                cond = cond[batch:]  # batched classifier-free guidance: [negative, positive]
        if arch.get("guidance"):
            guidance = self._guidance_scale
            pipe = self._pipe() if self._pipe is not None else None
            if guidance is None and pipe is not None:
                guidance = getattr(pipe, "guidance_scale", None)
            if guidance is None:
                raise ValueError("this SideNet is conditioned on the guidance scale: call scheduler.bind(pipe), or "
                                 "scheduler.set_condition(guidance_scale=...)")
        return cond, guidance

    # ------------------------------------------------------------------------------------
    # schedule

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        sigmas: Optional[list] = None,
        mu: Optional[float] = None,
        timesteps: Optional[list] = None,
    ) -> None:
        """The pipeline's schedule, as ``FlowMatchEulerDiscreteScheduler`` builds it, or the
        SideNet's saved grid for this many steps (see the module docstring). Resets the solver.

        ``num_inference_steps=0`` is diffusers' empty schedule (kept: no step runs).

        Raises:
            ValueError: ``num_inference_steps`` is negative, not a whole number (a float, a bool),
                or None without ``sigmas`` or ``timesteps``.
        """
        n = num_inference_steps
        if n is None:
            if sigmas is None and timesteps is None:
                raise ValueError("num_inference_steps: pass the number of steps (an int >= 1), or sigmas= or "
                                 "timesteps= for an explicit schedule; got none of them")
            n = len(sigmas) if sigmas is not None else len(timesteps)
        elif isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
            raise ValueError(f"num_inference_steps: the number of steps, an int >= 1 (0 gives diffusers' empty "
                             f"schedule), got {n!r}")
        grid = None
        if self.config.use_sidenet_grid and self.config.sidenet_grid is not None and n:
            grid = grid_for_steps(self.config.sidenet_grid, int(n))
        self._grid_text = None if grid is None else describe(grid)
        if grid is None:
            super().set_timesteps(num_inference_steps, device, sigmas, mu, timesteps)
        else:
            self.num_inference_steps = len(grid) - 1
            self.sigmas = torch.tensor(grid, dtype=torch.float32, device=device)
            self.timesteps = self.sigmas[:-1] * self.config.num_train_timesteps
            self._step_index = None
            self._begin_index = None
        self._sigma_list = self.sigmas.detach().to("cpu", torch.float64).tolist()
        self._reset_solver_state()

    @property
    def sidenet_grid_in_use(self) -> Optional[str]:
        """The SideNet grid the current schedule comes from, as text; None when the schedule is
        the pipeline's."""
        return self._grid_text

    def _reset_solver_state(self) -> None:
        self._pending: Optional[Prediction] = None
        self._returned: Optional[torch.Tensor] = None
        self._history: tuple = ()
        self._capture_open = True
        self.gaps: list = []

    # ------------------------------------------------------------------------------------
    # the step

    def _perception(self, sample: torch.Tensor) -> Any:
        if self.sidenet is None:
            return get_perception(self.config.perception or "anchor-only")
        if getattr(self, "_checked_shape", None) != (id(self.sidenet), tuple(sample.shape)):
            check_sidenet_state(self.sidenet, tuple(sample.shape), "BASolverScheduler: the SideNet")
            self._checked_shape = (id(self.sidenet), tuple(sample.shape))
        p = next(self.sidenet.parameters(), None)
        if p is not None and (p.device != sample.device or p.dtype != sample.dtype):
            self.sidenet.to(device=sample.device, dtype=sample.dtype)
        cond, guidance = self._condition(sample.shape[0])
        return NeuralPerception(self.sidenet, guidance_scale=guidance, cond=cond)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        generator: Optional[torch.Generator] = None,
        per_token_timesteps: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[SchedulerOutput, tuple]:
        """One interval sigma_i -> sigma_{i+1} from the velocity ``model_output`` at ``sample``.

        ``timestep`` is the entry of ``scheduler.timesteps`` the pipeline is at (it locates the
        step like the Euler scheduler's, or the begin index does). ``generator`` is accepted and
        unused (the step is deterministic); ``per_token_timesteps`` is refused.
        """
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError("timestep: pass an entry of scheduler.timesteps, not an integer index "
                             "(e.g. from enumerate(timesteps))")
        if per_token_timesteps is not None:
            raise ValueError("per_token_timesteps: BASolverScheduler integrates one time per sample; leave it None")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output: shape {tuple(model_output.shape)} differs from the sample's "
                             f"{tuple(sample.shape)}")
        if self.step_index is None:
            self._check_timestep(timestep)
            self._init_step_index(timestep)
        if not hasattr(self, "_sigma_list") or len(self._sigma_list) != len(self.sigmas):
            self._sigma_list = self.sigmas.detach().to("cpu", torch.float64).tolist()
        i = self.step_index
        if i + 1 >= len(self._sigma_list):
            raise IndexError(f"step: called {i + 1} times on a schedule of {len(self._sigma_list) - 1} steps; "
                             "call set_timesteps again")
        t0, t1 = self._sigma_list[i], self._sigma_list[i + 1]
        where = f"step {i + 1} of {len(self._sigma_list) - 1} (sigma {t0:g} -> {t1:g})"
        if not bool(torch.isfinite(sample).all()):
            raise FloatingPointError(f"BASolverScheduler.step: the latents handed to {where} contain NaN/inf; "
                                     "check what produced them (the initial noise, a callback_on_step_end)")
        if not bool(torch.isfinite(model_output).all()):
            raise FloatingPointError(
                f"BASolverScheduler.step: the model output at {where} contains NaN/inf for finite latents: the "
                "transformer (or the guidance combination) turned finite inputs into NaN/inf. Check it at this sigma, "
                "and its dtype (float16 overflows past 65504: try bfloat16 or float32)")
        work = torch.promote_types(sample.dtype, torch.float32)
        x, v = sample.to(work), model_output.to(work)
        solver = BiAnchorSolver(get_rule(self.config.rule), self._perception(sample))
        anchor = Anchor(t0, x, v)

        pending = self._pending
        if pending is not None and not self._unchanged(sample):
            pending = None  # the latents were changed between steps: take them as they are
        if pending is not None:
            state, info = solver.correct(pending, anchor)
            self.gaps.append(float(info.gap))
        else:
            state = BiAnchorState(t0, x, anchor, push_anchor(self._history, anchor, history_size(solver.perception)))

        last = i + 2 == len(self._sigma_list)
        if self.config.anchors == "bi" and not last:
            pred = solver.predict(state, t1)
            self._pending, x_next, history = pred, pred.x_pred, state.history
        else:
            nxt, _ = solver.step(_no_field, state, t1, bi=False, evaluate_end=False)
            self._pending, x_next, history = None, nxt.x, nxt.history
        if not bool(torch.isfinite(x_next).all()):
            what = "the SideNet's velocities" if self.sidenet is not None else "the quadrature update"
            raise FloatingPointError(
                f"BASolverScheduler.step: the latents after {where} are NaN/inf although the latents and the model "
                f"output were finite: {what} overflowed. Check the SideNet (trained for this model and schedule?) "
                "or use more steps")
        self._history = history
        prev_sample = x_next.to(model_output.dtype)
        self._returned = prev_sample
        self._capture_open = True
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _check_timestep(self, timestep: Union[float, torch.Tensor]) -> None:
        """Refuse a first ``timestep`` that is not an entry of ``scheduler.timesteps`` (without a
        begin index, the step is located by it; diffusers would fail with an IndexError)."""
        if self.begin_index is not None:
            return
        schedule = self.timesteps
        t = torch.as_tensor(timestep, device=schedule.device).to(schedule.dtype).reshape(-1)
        if t.numel() != 1 or not bool((schedule == t).any()):
            shown = ", ".join(f"{float(v):g}" for v in schedule[:4]) + (", ..." if len(schedule) > 4 else "")
            raise ValueError(f"timestep: {timestep!r} is not an entry of scheduler.timesteps ([{shown}], "
                             f"{len(schedule)} in all); pass the entries of scheduler.timesteps in order, after "
                             "set_timesteps (or set_begin_index for img2img)")

    def _unchanged(self, sample: torch.Tensor) -> bool:
        """Whether ``sample`` is the latents the last step returned (up to a dtype cast by the
        pipeline)."""
        r = self._returned
        if r is None or sample.shape != r.shape or sample.device != r.device:
            return False
        return torch.equal(sample.to(r.dtype), r) or torch.equal(sample, r.to(sample.dtype))

    # ------------------------------------------------------------------------------------
    # saving and loading

    def save_pretrained(self, save_directory: Union[str, os.PathLike], push_to_hub: bool = False, **kwargs: Any) -> None:
        """``scheduler_config.json`` (with the SideNet's architecture and grid) and, with a SideNet,
        ``sidenet.safetensors`` beside it (written atomically)."""
        os.makedirs(save_directory, exist_ok=True)
        if self.sidenet is not None:
            extra = {} if self.config.sidenet_grid is None else {"grid": self.config.sidenet_grid}
            save_sidenet(self.sidenet, Path(save_directory) / SIDENET_WEIGHTS_NAME, extra=extra)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, sidenet: Any = None, **kwargs: Any):
        """``ConfigMixin.from_config``, keeping ``sidenet=`` (a module or file path), which the
        base class would drop: ``BASolverScheduler.from_config(pipe.scheduler.config, sidenet=path)``.
        A config that already declares a SideNet (a saved BASolverScheduler's) accepts only one
        of that architecture and grid; use :meth:`set_sidenet` to replace it by another."""
        out = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        scheduler = out[0] if isinstance(out, tuple) else out
        if sidenet is not None:
            scheduler._attach(sidenet, check=scheduler.config.sidenet_config is not None)
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike, None] = None,
                        subfolder: Optional[str] = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """Load the config and, when it declares a SideNet, ``sidenet.safetensors`` beside it
        (a local directory, or a Hub repository through ``huggingface_hub``).

        Raises:
            ArchitectureMismatch: the weights file's architecture or grid differs from the
                config's (``sidenet_config``, ``sidenet_grid``), or a file is present for a
                config that declares no SideNet.
            FileNotFoundError: the config declares a SideNet and its weights are missing.
        """
        sidenet = kwargs.pop("sidenet", None)
        out = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder,
                                      return_unused_kwargs=return_unused_kwargs, **kwargs)
        scheduler = out[0] if isinstance(out, tuple) else out
        if sidenet is not None:
            scheduler._attach(sidenet, check=scheduler.config.sidenet_config is not None)
            return out
        path = _locate(pretrained_model_name_or_path, subfolder, kwargs, required=scheduler.config.sidenet_config is not None)
        if path is None:
            return out
        net, grid = _read_sidenet_file(path)
        what = f"the SideNet in {path}"
        scheduler._check_against_config(net.config(), grid, what)
        scheduler.sidenet = net.eval().requires_grad_(False)
        return out


# Record the package, not this module, in a saved pipeline's model_index.json: diffusers resolves
# the class (and SchedulerMixin) there by attribute, and the package is imported whenever anything
# of it is, while its lazy __getattr__ keeps ``import adapters.diffusers_flow`` free of diffusers.
BASolverScheduler.__module__ = "adapters.diffusers_flow"


def _no_field(t: float, x: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("BASolverScheduler: the pipeline makes the backbone calls; the scheduler never does")


def _locate(root: Any, subfolder: Optional[str], kwargs: dict, required: bool) -> Optional[Path]:
    """The SideNet weights file of a saved scheduler, or None when there is none and none is needed."""
    if root is None:
        return None
    local = Path(root) / (subfolder or "")
    if local.is_dir():
        path = local / SIDENET_WEIGHTS_NAME
        if path.is_file():
            return path
        if required:
            raise FileNotFoundError(f"{local}: scheduler_config.json declares a SideNet (sidenet_config) but "
                                    f"{SIDENET_WEIGHTS_NAME} is missing beside it")
        return None
    if not required:
        return None
    from huggingface_hub import hf_hub_download

    keys = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")
    return Path(hf_hub_download(str(root), SIDENET_WEIGHTS_NAME, subfolder=subfolder,
                                **{k: kwargs[k] for k in keys if k in kwargs}))
