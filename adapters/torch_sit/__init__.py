"""torch side of BA-solver: SideNets, their perception, chain training and checkpoints.

Divided by job (CONTRIBUTING.md draws the house):

- :mod:`.sidenet`: the SideNets (:mod:`.sidenet.networks`), their perception, chain training
  (:mod:`.sidenet.chain`, :mod:`.sidenet.train`), checkpoints and exported SideNets.
- :mod:`.sit`: the REPA SiT (:class:`SiT`, ``build_sit``, ``sit_config``), ``load_repa_checkpoint``
  and the guided backbone (``repa_sit_backbone``, registered as ``"repa-sit-xl2-256"``,
  ``"repa-sit-xl2-512"``, ``"repa-sit-tiny"``).
- :mod:`.imagenet`: 50K-image sampling, decoding and the ADM metrics.
- :mod:`.digits`: the digits SiT behind ``baquad demo``, its shipped weights, training and demos.
- :mod:`.backbones`: the backbone registry (``get_backbone("gmm-ring2d")``); :mod:`.files`: atomic
  writes, file hashes and baquad's safetensors container; :mod:`.distributed`: torchrun set-up.
- :mod:`.train`: the ``python -m adapters.torch_sit.train`` command.
"""

from .backbones import Backbone, CountingBackbone, backbone_names, get_backbone, register_backbone
from .sidenet.chain import ChainConfig, ChainTrainer, chain_losses, sample_batch, sample_times, simulate_chain
from .sidenet.checkpoint import ArchitectureMismatch, load_checkpoint, load_sidenet, save_checkpoint, save_sidenet
from .sidenet.perception import NeuralPerception
from .sidenet.networks import ConvSideNet, MLPSideNet, TokenSideNet, build_sidenet, count_parameters, sidenet_report
from .sit.model import SiT, SiTConfig, build_sit, sit_config
from .sit.backbone import GuidedSiT, SiTBackbone, repa_sit_backbone  # also registers the repa-sit backbones
from .sit.checkpoint import load_repa_checkpoint
from . import digits  # registers the "digits-sit" backbone (scikit-learn is imported only for the data)
from .sidenet.paper import paper_sidenet, paper_sidenet_config

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
