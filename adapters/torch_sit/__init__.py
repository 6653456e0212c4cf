"""torch side of BA-solver: SideNets, their perception, chain training and checkpoints.

- :mod:`.sidenet`: :class:`MLPSideNet` (vector states), :class:`ConvSideNet` (images/latents),
  :class:`TokenSideNet` (token sequences such as packed Flux latents),
  ``count_parameters``, ``sidenet_report``, ``build_sidenet``.
- :mod:`.perception`: :class:`NeuralPerception`, a SideNet behind ``baquad``'s perception contract
  (all offsets of an interval in one batched forward).
- :mod:`.chain`: :class:`ChainConfig`, ``chain_losses`` and :class:`ChainTrainer` (paper Sec. 3.2.3).
- :mod:`.checkpoint`: atomic safetensors checkpoints, ``save_sidenet`` / ``load_sidenet``.
- :mod:`.backbones`: the backbone registry (``get_backbone("gmm-ring2d")``).
- :mod:`.sit`: the REPA SiT (:class:`SiT`, ``build_sit``, ``sit_config``); :mod:`.sit_checkpoint`:
  ``load_repa_checkpoint``; :mod:`.sit_backbone`: the guided backbone (``repa_sit_backbone``,
  registered as ``"repa-sit-xl2-256"``, ``"repa-sit-xl2-512"``, ``"repa-sit-tiny"``);
  :mod:`.paper_sidenet`: ``paper_sidenet_config`` (Table 4).
- :mod:`.train`: ``train(...)`` and the ``python -m adapters.torch_sit.train`` command (DDP-ready).
"""

from .backbones import Backbone, CountingBackbone, backbone_names, get_backbone, register_backbone
from .chain import ChainConfig, ChainTrainer, chain_losses, sample_batch, sample_times, simulate_chain
from .checkpoint import ArchitectureMismatch, load_checkpoint, load_sidenet, save_checkpoint, save_sidenet
from .perception import NeuralPerception
from .sidenet import ConvSideNet, MLPSideNet, TokenSideNet, build_sidenet, count_parameters, sidenet_report
from .sit import SiT, SiTConfig, build_sit, sit_config
from .sit_backbone import GuidedSiT, SiTBackbone, repa_sit_backbone  # also registers the repa-sit backbones
from .sit_checkpoint import load_repa_checkpoint
from . import digits  # registers the "digits-sit" backbone (scikit-learn is imported only for the data)
from .paper_sidenet import paper_sidenet, paper_sidenet_config

__all__ = [
    "MLPSideNet",
    "ConvSideNet",
    "TokenSideNet",
    "build_sidenet",
    "count_parameters",
    "sidenet_report",
    "NeuralPerception",
    "ChainConfig",
    "ChainTrainer",
    "chain_losses",
    "sample_batch",
    "sample_times",
    "simulate_chain",
    "save_checkpoint",
    "load_checkpoint",
    "save_sidenet",
    "load_sidenet",
    "ArchitectureMismatch",
    "Backbone",
    "CountingBackbone",
    "get_backbone",
    "register_backbone",
    "backbone_names",
    "SiT",
    "SiTConfig",
    "build_sit",
    "sit_config",
    "GuidedSiT",
    "SiTBackbone",
    "repa_sit_backbone",
    "load_repa_checkpoint",
    "paper_sidenet",
    "paper_sidenet_config",
]
