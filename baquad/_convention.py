"""The time convention of fields, and the error for a field written for the other one.

``baquad.solve``, ``baquad.reference.reference_solve`` and ``baquad.perception.Oracle`` call a
field as ``vfield(t, x)`` with ``t`` a Python float (docs/conventions.md, "Fields"). torchdiffeq's
own ``odeint`` (and ``baquad.torchdiffeq``, which runs inside it) passes a 0-dim tensor instead.
A field written for tensors (``t.expand(...)``, ``t.reshape(...)``) then fails on its first call
with an AttributeError or TypeError deep inside it; :func:`float_time_error` turns that into an
error naming the convention and the fix, with the original kept as ``__cause__``.
"""

from __future__ import annotations

__all__ = ["float_time_error"]


def float_time_error(err: BaseException, t: float, caller: str) -> BaseException:
    """The exception to raise (``from err``) when a field's first call with a float time ``t``
    raised ``err`` (an AttributeError or TypeError): the same type, with the convention and the
    fix in its message."""
    kind = AttributeError if isinstance(err, AttributeError) else TypeError
    return kind(
        f"vfield: its first call, vfield(t, x) with t = {t!r} (a Python float), raised "
        f"{type(err).__name__}: {err}. {caller} calls vfield(t, x) with t a Python float; torchdiffeq's "
        "odeint passes a 0-dim tensor. If your field expects a tensor time (t.expand(...), t.reshape(...)), "
        "wrap it: lambda t, x: f(torch.tensor(t, dtype=x.dtype, device=x.device), x)  "
        "(see docs/conventions.md, \"Fields\")."
    )
