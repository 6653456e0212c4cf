"""Prediction drift of a perception against the offset from its anchor (the paper's Fig. 3(a) idea).

Run ``python -m analysis.prediction_drift`` (options: ``--flow``, ``--steps``, ``--samples``,
``--sub``, ``--perceptions``, ``--sidenet PATH``, ``--quick``, ``--out``).

Setup: ``--samples`` seeded noises at t = 1 are integrated along their exact trajectories to t = 0
with ``reference_solve`` (DOP853, rtol = atol = 1e-10), which gives the exact states x(t) and the
exact velocities v(x(t), t) on a fine grid. The grid is cut into ``--steps`` uniform intervals
[t_i, t_i + h] (h < 0: generation), every interval into ``--sub`` equal parts s = j h / sub.
Anchors are exact states with their exact velocities (as if the solver were exact up to t_i), and
the perception's history is the exact anchors of the same grid, so the polynomial perception sees
what it sees inside the solver. For every interval:

- forward: the perception at the start anchor (x(t_i), v_i, t_i) predicts v(t_i + s), s = 0..h;
- backward: at the terminal anchor (x(t_i + h), v_{i+1}, t_i + h) it predicts v(t_i + s) with
  the negative offset s - h.

Error = mean over samples of ``|v_hat - v(x(t_i + s), t_i + s)|_2``, averaged over the intervals.
Single-anchor uses the forward prediction over the whole interval (offsets 0..h); bi-anchor the
forward prediction for s < h/2 and the backward one for s >= h/2 (offsets at most h/2, the
midpoint backward as in the solver). Unlike the solver, the terminal anchor here is on the exact
trajectory (the solver's is at the predictor x~), so this isolates the perception's own drift.

Writes ``<out>/prediction_drift_<flow>.png`` (left: error against |offset| / |h|, forward and
backward; right: error along the interval, single- vs bi-anchor) and ``.md`` (errors at h/4,
h/2, 3h/4, h and the interval means, whose bi/single ratio the paper's linear-drift bound puts at
1/2), and prints the table and the paths. ``--out`` defaults to ``analysis/figures``, and to
``runs/quick`` for a ``--quick`` smoke run, which never writes into the committed figures.
``--sidenet PATH`` adds a trained SideNet, loaded with ``adapters.torch_sit`` (``load_sidenet``,
``NeuralPerception``); it must have been trained on the same flow (a SideNet for states of
another dimension is refused). Every flag is checked before anything is computed or written.
Default run: gmm-ring2d, 5 intervals, 256 samples, under 10 s on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from baquad.flows import get_flow
from baquad.perception import Anchor, AnchorOnly, AnchorPolynomial, Oracle, Perception, PerceptionWrapper, history_size

from ._common import (ArgumentParser, command, even_int_at_least_2, existing_file, flow_name, load_flow_sidenet,
                      markdown_table, output_paths, positive_int, pyplot, resolve_out, save_figure, setup_problem, shown)

BUILTIN = {
    "anchor-only": AnchorOnly,
    "polynomial": AnchorPolynomial,
}
FRACTIONS = (0.25, 0.5, 0.75, 1.0)


class _TorchBridge(PerceptionWrapper):
    """Runs a torch perception (the SideNet) on the numpy states of this script."""

    def __call__(self, x, v, t, offsets, history=()):
        import torch

        out = self.inner(torch.from_numpy(np.ascontiguousarray(x)).float(),
                         torch.from_numpy(np.ascontiguousarray(v)).float(), float(t), offsets)
        return out.detach().double().cpu().numpy()


def load_sidenet_perception(path: str, flow: Any) -> Perception:
    """A numpy-facing perception from a SideNet trained for ``flow``'s states, or SystemExit saying
    what failed (:func:`analysis._common.load_flow_sidenet`)."""
    from adapters.torch_sit.sidenet.perception import NeuralPerception

    return _TorchBridge(NeuralPerception(load_flow_sidenet(path, flow)))


def trajectories(flow: Any, n_samples: int, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact states ``(T, B, d)`` at ``times`` from seeded noise at ``times[0]``, and velocities."""
    xs = setup_problem(flow, n_samples, seed=0, times=times, scored=False, threads=None).ref
    vs = np.stack([flow(float(t), x) for t, x in zip(times, xs)])
    return xs, vs


def drift(perception: Perception, times: np.ndarray, xs: np.ndarray, vs: np.ndarray, steps: int,
          sub: int) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward prediction errors, each ``(steps, sub + 1)``: entry ``[i, j]`` is the
    mean error at ``t_i + j h / sub`` of interval ``i``."""
    hist_size = history_size(perception) or steps + 1
    anchors = [Anchor(float(times[i * sub]), xs[i * sub], vs[i * sub]) for i in range(steps + 1)]
    fwd = np.zeros((steps, sub + 1))
    bwd = np.zeros((steps, sub + 1))
    for i in range(steps):
        t_a, t_b = times[i * sub], times[(i + 1) * sub]
        true = vs[i * sub:(i + 1) * sub + 1]  # (sub + 1, B, d)
        offsets = tuple(float(times[i * sub + j] - t_a) for j in range(1, sub + 1))
        pred = perception(xs[i * sub], vs[i * sub], float(t_a), offsets, tuple(anchors[max(0, i + 1 - hist_size):i + 1]))
        fwd[i, 1:] = np.linalg.norm(pred - true[1:], axis=-1).mean(axis=-1)
        offsets = tuple(float(times[i * sub + j] - t_b) for j in range(0, sub))
        pred = perception(xs[(i + 1) * sub], vs[(i + 1) * sub], float(t_b), offsets,
                          tuple(anchors[max(0, i + 2 - hist_size):i + 2]))
        bwd[i, :-1] = np.linalg.norm(pred - true[:-1], axis=-1).mean(axis=-1)
    return fwd, bwd


def bi_curve(fwd: np.ndarray, bwd: np.ndarray, sub: int) -> np.ndarray:
    """Bi-anchor: forward for s < h/2, backward for s >= h/2 (the midpoint goes backward)."""
    j = np.arange(sub + 1)
    return np.where(2 * j < sub, fwd, bwd)


def interval_mean(curve: np.ndarray) -> np.ndarray:
    """Mean over the interval (trapezoid rule in s / h) along the last axis."""
    c = np.asarray(curve)
    return (c[..., 1:] + c[..., :-1]).sum(axis=-1) / (2 * (c.shape[-1] - 1))


def _at(curve: np.ndarray, frac: float, sub: int) -> float:
    return float(curve[int(round(frac * sub))])


def perception_names(text: str) -> list[str]:
    """argparse ``type=`` of ``--perceptions``: comma-separated built-in names (may be empty)."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [n for n in names if n not in (*BUILTIN, "oracle")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown perception(s) {bad}; valid: {', '.join((*BUILTIN, 'oracle'))}")
    return names


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The flags, every one checked before anything is computed, loaded or written."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", default="gmm-ring2d", type=flow_name, help="flow (default gmm-ring2d)")
    parser.add_argument("--steps", type=positive_int, default=5, help="uniform intervals over t: 1 -> 0 (default 5)")
    parser.add_argument("--samples", type=positive_int, default=256, help="trajectories (default 256)")
    parser.add_argument("--sub", type=even_int_at_least_2, default=16, help="offsets per interval (even; default 16)")
    parser.add_argument("--perceptions", type=perception_names, default=["anchor-only", "polynomial"],
                        help="comma-separated built-ins: anchor-only, polynomial, oracle (default the first two)")
    parser.add_argument("--sidenet", default=None, metavar="PATH",
                        help="a trained SideNet (.safetensors, checkpoint or run directory) for this flow")
    parser.add_argument("--quick", action="store_true",
                        help="32 samples, 8 offsets per interval (a smoke run; writes under runs/quick by default)")
    parser.add_argument("--out", default=None,
                        help="output directory (default analysis/figures; runs/quick with --quick)")
    args = parser.parse_args(argv)
    resolve_out(args)
    if args.quick:
        args.samples, args.sub = min(args.samples, 32), 8
    if not args.perceptions and not args.sidenet:
        parser.error("no perception to evaluate: give --perceptions or --sidenet")
    if args.sidenet:
        existing_file("--sidenet", args.sidenet)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    flow = get_flow(args.flow)
    perceptions: list[tuple[str, Perception]] = []
    for name in args.perceptions:
        if name == "oracle":
            perceptions.append(("oracle", Oracle(flow, rtol=1e-10, atol=1e-10)))
        else:
            perceptions.append((name, BUILTIN[name]()))
    if args.sidenet:
        perceptions.append((f"sidenet ({Path(args.sidenet).name})", load_sidenet_perception(args.sidenet, flow)))

    start = time.perf_counter()
    times = np.linspace(1.0, 0.0, args.steps * args.sub + 1)
    xs, vs = trajectories(flow, args.samples, times)
    h = float(times[args.sub] - times[0])
    speed = float(np.linalg.norm(vs, axis=-1).mean())

    curves = {}
    for name, p in perceptions:
        fwd, bwd = drift(p, times, xs, vs, args.steps, args.sub)
        curves[name] = (fwd, bwd, bi_curve(fwd, bwd, args.sub))

    # ---- table
    rows, rows_int = [], []
    for name, (fwd, bwd, bi) in curves.items():
        single_m, bi_m = fwd.mean(axis=0), bi.mean(axis=0)
        s_mean, b_mean = float(interval_mean(single_m)), float(interval_mean(bi_m))
        rows.append([name, "single", *[f"{_at(single_m, f, args.sub):.3g}" for f in FRACTIONS],
                     f"{s_mean:.3g}", ""])
        rows.append([name, "bi", *[f"{_at(bi_m, f, args.sub):.3g}" for f in FRACTIONS],
                     f"{b_mean:.3g}", f"{b_mean / s_mean:.2f}" if s_mean > 0 else "-"])
        for i in range(args.steps):
            si, bi_i = float(interval_mean(fwd[i])), float(interval_mean(bi[i]))
            rows_int.append([name, f"{times[i * args.sub]:.2f} -> {times[(i + 1) * args.sub]:.2f}",
                             f"{si:.3g}", f"{bi_i:.3g}", f"{bi_i / si:.2f}" if si > 0 else "-"])
    heads = ["perception", "anchors", *[f"s = {f:g} h" for f in FRACTIONS], "interval mean", "bi / single"]
    text = markdown_table(heads, rows, "ll" + "r" * (len(heads) - 2))
    text_int = markdown_table(["perception", "interval", "single mean", "bi mean", "bi / single"],
                              rows_int, "llrrr")

    # ---- plot
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.8))
    u = np.arange(args.sub + 1) / args.sub
    for k, (name, (fwd, bwd, bi)) in enumerate(curves.items()):
        color = f"C{k}"
        ax0.plot(u, fwd.mean(axis=0), color=color, marker="o", ms=3, label=f"{name}: forward from start anchor")
        ax0.plot(u, bwd.mean(axis=0)[::-1], color=color, ls="--", marker="s", ms=3,
                 label=f"{name}: backward from terminal anchor")
        sm, bm = fwd.mean(axis=0), bi.mean(axis=0)
        ax1.plot(u, sm, color=color, marker="o", ms=3,
                 label=f"{name}: single-anchor (mean {float(interval_mean(sm)):.3g})")
        ax1.plot(u, bm, color=color, ls="--", marker="s", ms=3,
                 label=f"{name}: bi-anchor (mean {float(interval_mean(bm)):.3g})")
    ax0.set_xlabel("|offset| / |h|")
    ax0.set_ylabel("mean |v_hat - v|")
    ax0.set_title(f"(a) prediction error vs offset, {args.flow}, h = {h:g}")
    ax1.set_xlabel("position in the interval s / h")
    ax1.set_title("(b) along the interval: single- vs bi-anchor")
    ax1.axvline(0.5, color="0.6", lw=0.8, ls=":")
    for ax in (ax0, ax1):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
    png, md = output_paths(args.out, f"prediction_drift_{args.flow}")
    save_figure(fig, png, dpi=90)

    cmd = command("analysis.prediction_drift", argv)
    body = "\n".join([
        f"# Perception drift on {args.flow}",
        "",
        f"`{cmd}`",
        "",
        f"{args.samples} exact trajectories from seeded noise at t = 1 (reference_solve, DOP853 at "
        f"rtol = atol = 1e-10), {args.steps} uniform intervals of h = {h:g} over t: 1 -> 0, "
        f"{args.sub} offsets per interval. Error = mean over samples of |v_hat - v|_2 (exact velocity "
        f"on the exact trajectory), averaged over the intervals; the mean speed |v| along the "
        f"trajectories is {speed:.3g}. Anchors are exact states. Single-anchor predicts s = 0..h from "
        "the start anchor; bi-anchor uses the start anchor for s < h/2 and the terminal anchor for "
        "s >= h/2, so no offset exceeds h/2. `interval mean` is the error averaged over the interval "
        "(what the quadrature integrates); under the paper's bound |e(d)| <= L K |d| its bi/single "
        "ratio is 1/2 (`baquad.order.anchor_error_bounds`).",
        "",
        text,
        "",
        "Per interval (interval means):",
        "",
        text_int,
        "",
    ])
    md.write_text(body)
    print(f"$ {cmd}")
    print(text)
    print(f"wrote {shown(png)}")
    print(f"wrote {shown(md)}")
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
