"""Imports of the packages that only some parts of baquad need, failing with the command that
installs them.

The core needs numpy, scipy and sympy (the dependencies of ``pip install baquad``); torch,
torchdiffeq, safetensors and tqdm come with the ``torch`` extra (``pip install 'baquad[torch]'``).
A missing one is an ImportError that names the package, the part of baquad that needs it and
the command to install it, instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require", "sympy"]

#: package -> the command that installs it
INSTALL = {
    "sympy": "pip install sympy (a dependency of baquad: reinstalling baquad with pip installs it)",
    "torch": "pip install 'baquad[torch]' (or install the torch build for your machine first)",
    "torchdiffeq": "pip install 'baquad[torch]'",
}


def missing(err: ImportError, feature: str) -> ImportError:
    """The ImportError to raise when ``feature`` failed to import a package (``err``): it names
    the package, ``feature`` and the command that installs it."""
    package = (err.name or "").split(".")[0]
    hint = INSTALL.get(package, f"pip install {package}" if package else "reinstall baquad with pip")
    return ImportError(f"{feature} needs {package or 'a package'}, which cannot be imported ({err}); install it: {hint}",
                       name=err.name)


def require(module: str, feature: str) -> ModuleType:
    """``import module``, or an ImportError saying that ``feature`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is None:
            err.name = module
        raise missing(err, feature) from err


def sympy() -> ModuleType:
    """sympy, for the exact quadrature derivations (``baquad.rules.derive``) and the symbolic
    order analysis (``baquad.order``)."""
    return require("sympy", "the exact (symbolic) quadrature analysis of baquad.rules / baquad.order")
