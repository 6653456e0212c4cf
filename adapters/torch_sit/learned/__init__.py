"""Learned solvers trained against where the sample ends: teacher endpoint sets, one endpoint
trainer, BNS and LD3 (docs/learned-solvers.md).

- :mod:`.teacher`: noises, their conditioning and their tight DOP853 solutions at t = 0, one
  file per backbone, guidance and role (``python -m adapters.torch_sit.learned.teacher``);
- :mod:`.trainer`: the generic trainer of a solver module against a teacher set (checkpoints,
  bitwise resume, time budget, log and summary);
- :mod:`.bns`: bespoke non-stationary solvers (``python -m adapters.torch_sit.learned.bns``),
  exported as a core coefficient file (:class:`baquad.solvers.bns.NonStationaryCoefficients`);
- :mod:`.ld3`: LD3, the grid of any registered method (``python -m adapters.torch_sit.learned.ld3``),
  exported as a core grid file (:mod:`baquad.solvers.learned_grid`).

Nothing else in ``adapters.torch_sit`` imports this package.
"""
