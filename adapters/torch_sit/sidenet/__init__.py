"""The SideNet side: networks, their perception, chain training, checkpoints and exported files.

- :mod:`.networks`: :class:`MLPSideNet`, :class:`ConvSideNet` (at full resolution, or on patches),
  :class:`TokenSideNet`, ``build_sidenet``.
- :mod:`.paper`: the latent SideNet for a backbone, the patch design or the paper's Table-4 ConvSideNet
  (``paper_sidenet_config``).
- :mod:`.perception`: :class:`NeuralPerception`, a SideNet behind ``baquad``'s perception contract.
- :mod:`.chain`: :class:`ChainConfig`, ``chain_losses``, :class:`ChainTrainer` (paper Sec. 3.2.3).
- :mod:`.checkpoint`: training checkpoints and exported SideNets (``save_sidenet`` / ``load_sidenet``).
- :mod:`.train`: ``train(...)``, ``recipe_for`` and the ``python -m adapters.torch_sit.train`` command.
"""
