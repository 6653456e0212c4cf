"""BA-solver inside diffusers pipelines (Stable Diffusion 3, Flux): a scheduler and the
backbone binding that trains its SideNet.

- :class:`BASolverScheduler` (:mod:`.scheduler`): a drop-in replacement for
  ``FlowMatchEulerDiscreteScheduler`` that integrates every step with BA-solver and a trained
  SideNet at one transformer call per step::

      from adapters.diffusers_flow import BASolverScheduler
      pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet="runs/sd3/sidenet.safetensors")
      pipe.scheduler.bind(pipe)   # only for a SideNet conditioned on the prompt or the guidance scale

- :mod:`.backbone`: a pipeline's transformer as a chain-training backbone (registered as
  ``"diffusers"`` when imported), trained by :mod:`.train`
  (``python -m adapters.diffusers_flow.train --model PATH --prompt-embeddings emb.safetensors ...``).
- :mod:`.embeddings`: the file of precomputed prompt embeddings the trainer draws from
  (``python -m adapters.diffusers_flow.embeddings --model PATH --prompts prompts.txt --out emb.safetensors``).
- :mod:`.grid`: the grid a SideNet may carry.
- :mod:`.tiny`: tiny random SD3/Flux pipelines (offline tests, the example, the GPU check).

See ``docs/diffusers.md``.

Importing this package imports neither diffusers nor torch: the names above load on first
access (a module-level ``__getattr__``). ``SchedulerMixin`` is exposed too, because
``DiffusionPipeline.from_pretrained`` looks up a custom component's class and ``SchedulerMixin``
as attributes of the module recorded in ``model_index.json``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BASolverScheduler", "SchedulerMixin", "SIDENET_WEIGHTS_NAME", "DiffusersBackbone", "load_diffusers_backbone",
           "compute_prompt_embeddings", "save_prompt_embeddings", "load_prompt_embeddings", "PromptEmbeddings"]

_LAZY = {
    "BASolverScheduler": ".scheduler",
    "SchedulerMixin": ".scheduler",
    "SIDENET_WEIGHTS_NAME": ".scheduler",
    "DiffusersBackbone": ".backbone",
    "load_diffusers_backbone": ".backbone",
    "PromptEmbeddings": ".embeddings",
    "compute_prompt_embeddings": ".embeddings",
    "save_prompt_embeddings": ".embeddings",
    "load_prompt_embeddings": ".embeddings",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
