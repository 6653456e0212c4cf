"""``python -m adapters.torch_sit.train``: train a SideNet by chain training.

The user's command; the code is in :mod:`adapters.torch_sit.sidenet.train`, whose public names
this module re-exports (``python -m adapters.torch_sit.train --help`` lists the flags).
"""

import sys

from .sidenet.train import GENERIC_RECIPE, RECIPES, TrainResult, build_parser, main, recipe_for, train

__all__ = ["GENERIC_RECIPE", "RECIPES", "TrainResult", "build_parser", "main", "recipe_for", "train"]

if __name__ == "__main__":
    sys.exit(main())
