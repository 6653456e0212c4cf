"""baquad: the Bi-Anchor Interpolation Solver (BA-solver) for flow-matching ODEs."""
