"""baquad: the Bi-Anchor Interpolation Solver (BA-solver) for flow-matching ODEs.

Entry point: :func:`baquad.solve`; the methods it runs are the registry :mod:`baquad.methods`
(``baquad.methods.method_names()``). The core imports neither torch nor matplotlib; it works on
numpy arrays and torch tensors alike.
"""

from . import methods  # noqa: F401  (the registry, as baquad.methods)
from .perception import AnchorOnly, AnchorPolynomial, FromDeviation, Oracle, Perception
from .rules import QuadratureRule, get_rule, rule_names
from .solve import SolveResult, solve

__all__ = [
    "solve",
    "SolveResult",
    "QuadratureRule",
    "get_rule",
    "rule_names",
    "Perception",
    "AnchorOnly",
    "AnchorPolynomial",
    "Oracle",
    "FromDeviation",
]
__version__ = "0.1.0"
