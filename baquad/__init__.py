"""baquad: the Bi-Anchor Interpolation Solver (BA-solver) for flow-matching ODEs.

Entry point: :func:`baquad.solve`. The core imports neither torch nor matplotlib; it works on
numpy arrays and torch tensors alike.
"""

from .perception import AnchorOnly, AnchorPolynomial, FromDeviation, Oracle, Perception
from .rules import QuadratureRule, get_rule, rule_names
from .solve import SolveResult, methods, solve

__all__ = [
    "solve",
    "SolveResult",
    "methods",
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
