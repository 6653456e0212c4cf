"""The SiT side: the REPA-compatible SiT (:mod:`.model`), loading REPA/SiT checkpoints
(:mod:`.checkpoint`) and the guided backbone registered as ``repa-sit-*`` (:mod:`.backbone`)."""
