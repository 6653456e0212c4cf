"""Train the digits models from scratch: the SiT backbone and the feature classifier.

    python -m adapters.torch_sit.digits.train backbone --out runs/digits-sit
    python -m adapters.torch_sit.digits.train classifier --out runs/digits-classifier
    python -m adapters.torch_sit.digits.train evaluate --weights runs/digits-sit/digits_sit.safetensors

Both train on the training split of :func:`~adapters.torch_sit.digits.model.load_digits_split` only
(the held-out digits are never seen), on the CPU by default, seeded: iteration i draws its batch
from a generator seeded by (seed, i), so a run resumed from a checkpoint continues exactly as an
uninterrupted one.

Backbone (flow matching, :mod:`adapters.torch_sit.digits.model`): per iteration a batch of training
images x with labels y (each replaced by the null class with probability ``label_dropout``),
t ~ U[0, 1], eps ~ N(0, I), x_t = (1 - t) x + t eps, and the loss mean |v(x_t, t, y) - (eps - x)|^2.
AdamW (betas 0.9, 0.999, no weight decay) at a constant learning rate after a linear warm-up,
then a cosine decay over the last ``decay_fraction`` of the iterations; the shipped weights are
the raw weights (no EMA: at these few thousand steps a slow EMA lags far behind the model). A
checkpoint (weights, AdamW moments, step; safetensors, atomic) is written every ``--ckpt-every``
iterations, and a run finds it and resumes.

Classifier: cross-entropy on the training split with random shifts of up to one pixel (zero =
background padding), AdamW, cosine learning rate; it reports its held-out accuracy.

Each command writes ``<out>/digits_sit.safetensors`` (or ``digits_classifier.safetensors``) with a
JSON sidecar (the settings, the wall time, iterations per second) and records the SHA-256 in
``<out>/SHA256SUMS``. To ship a retrained file, copy it with its sidecar into
``adapters/torch_sit/digits/weights`` and update that directory's ``SHA256SUMS`` line (``sha256sum``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ...commandline import HelpFormatter
from ..sidenet.chain import step_generator
from ..files import InvalidFile, atomic_write, read_header, read_tensors, serialise
from .model import (DIGITS_SIT_CONFIG, DigitsClassifier, load_digits_split, save_model, shipped_path,
                     sit_config_dict)
from ..sit.model import SiT, SiTConfig

__all__ = ["BackboneRecipe", "ClassifierRecipe", "train_backbone", "train_classifier", "classifier_accuracy",
           "evaluate_backbone", "main"]


@dataclass
class BackboneRecipe:
    """Settings of the backbone training (module docstring)."""

    iters: int = 6000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_iters: int = 200
    decay_fraction: float = 0.3
    label_dropout: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based)."""
        if step < self.warmup_iters:
            return self.lr * (step + 1) / self.warmup_iters
        start = int(self.iters * (1.0 - self.decay_fraction))
        if step < start:
            return self.lr
        p = (step - start) / max(self.iters - start, 1)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass
class ClassifierRecipe:
    """Settings of the classifier training."""

    iters: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 16
    feature_dim: int = 64
    seed: int = 0


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled or not sys.stderr.isatty(),
                dynamic_ncols=True, file=sys.stderr)


def flow_matching_batch(images: torch.Tensor, labels: torch.Tensor, recipe: BackboneRecipe, step: int,
                        null_class: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_t, t, y, target)`` of iteration ``step`` (drawn from the (seed, step) generator):
    training images with dropped labels, t ~ U[0, 1], x_t = (1 - t) x + t eps, target eps - x."""
    g = step_generator(recipe.seed, step)
    b = recipe.batch_size
    idx = torch.randint(0, images.shape[0], (b,), generator=g)
    x, y = images[idx], labels[idx].clone()
    y[torch.rand(b, generator=g) < recipe.label_dropout] = null_class
    t = torch.rand(b, generator=g)
    eps = torch.randn(x.shape, generator=g)
    tb = t.view(b, 1, 1, 1)
    return (1 - tb) * x + tb * eps, t, y, eps - x


CHECKPOINT_NAME = "checkpoint.safetensors"
_CKPT_FORMAT = "baquad-digits-backbone-checkpoint"


def save_backbone_checkpoint(out: Path, model: SiT, opt: torch.optim.Optimizer, step: int, arch: dict,
                             recipe: dict) -> Path:
    """Write ``out/checkpoint.safetensors`` atomically (:mod:`.safefile`): the SiT's weights
    (``model.<name>``), AdamW's tensors (``optim.<param index>.<name>``), and in the header the
    step, the architecture, the recipe and AdamW's param groups."""
    sd = opt.state_dict()
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    other: dict = {}
    for idx, state in sd["state"].items():
        for name, val in state.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{name}"] = val.detach().cpu().contiguous().clone()
            else:
                other.setdefault(str(idx), {})[name] = val
    meta = {"format": _CKPT_FORMAT, "step": int(step), "config": arch, "recipe": recipe,
            "param_groups": sd["param_groups"], "state_other": other}
    path = Path(out) / CHECKPOINT_NAME
    atomic_write(path, serialise(tensors, meta))
    return path


def load_backbone_checkpoint(path: Path, arch: dict) -> tuple[int, dict, dict]:
    """``(step, model state, optimizer state)`` of a backbone checkpoint, refused (naming the
    differing settings) when its architecture is not ``arch``."""
    header = read_header(path)
    meta = header.meta
    if meta.get("format") != _CKPT_FORMAT:
        raise InvalidFile(f"{path}: not a digits backbone checkpoint (format {meta.get('format')!r})")
    diff = sorted(k for k in set(arch) | set(meta["config"]) if arch.get(k) != meta["config"].get(k))
    if diff:
        raise ValueError(f"{path}: the checkpoint's SiT differs from the requested one in {', '.join(diff)}; "
                         "use the same architecture flags, or another --out (or --no-resume)")
    tensors = read_tensors(header)
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, extra in meta.get("state_other", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    return int(meta["step"]), model, {"state": state, "param_groups": groups}


def train_backbone(out: "str | Path", recipe: BackboneRecipe = BackboneRecipe(),
                   config: SiTConfig = DIGITS_SIT_CONFIG, *, ckpt_every: int = 500, resume: Optional[bool] = None,
                   progress: bool = True, log: Callable[..., None] = print,
                   data: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                   command: str = "python -m adapters.torch_sit.digits.train backbone") -> Path:
    """Train the digits SiT (module docstring); returns the written ``digits_sit.safetensors``.

    ``data``: ``(images, labels)`` to train on instead of the digits' training split (the lifted
    latent digits of :mod:`.latent`), shaped as ``config`` reads them; ``command`` is recorded in
    the sidecar."""
    out = Path(out)
    images, labels = load_digits_split("train") if data is None else data
    torch.manual_seed(recipe.seed)
    model = SiT(config, zero_init=True, generator=torch.Generator().manual_seed(recipe.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.999), weight_decay=0.0)
    arch = sit_config_dict(config)
    start = 0
    ckpt = out / CHECKPOINT_NAME
    if resume is True and not ckpt.is_file():
        raise FileNotFoundError(f"resume: no checkpoint in {out}")
    if ckpt.is_file() and resume is not False:
        start, weights, opt_state = load_backbone_checkpoint(ckpt, arch)
        model.load_state_dict(weights)
        opt.load_state_dict(opt_state)
        log(f"resuming from {ckpt} at step {start} of {recipe.iters}")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"digits SiT: {n_params:,} parameters; {images.shape[0]} training images; {recipe.iters - start} iterations")

    def save(step: int) -> None:
        save_backbone_checkpoint(out, model, opt, step, arch, dataclasses.asdict(recipe))

    model.train()
    bar = _progress(recipe.iters, "backbone", progress, start)
    t0, loss_sum, loss_n, last_loss = time.perf_counter(), 0.0, 0, None
    for step in range(start, recipe.iters):
        xt, t, y, target = flow_matching_batch(images, labels, recipe, step, config.num_classes)
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(step)
        loss = F.mse_loss(model(xt, t, y), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        loss_sum, loss_n = loss_sum + loss.item(), loss_n + 1
        bar.update(1)
        if (step + 1) % 100 == 0:  # the mean loss of the last 100 iterations
            last_loss, loss_sum, loss_n = loss_sum / loss_n, 0.0, 0
            bar.set_postfix(loss=f"{last_loss:.4f}")
            if bar.disable and (step + 1) % 1000 == 0:
                log(f"step {step + 1}: loss {last_loss:.4f} ({time.perf_counter() - t0:.0f} s)")
        if ckpt_every and (step + 1) % ckpt_every == 0 and step + 1 < recipe.iters:
            save(step + 1)
    bar.close()
    wall = time.perf_counter() - t0
    save(recipe.iters)
    done = recipe.iters - start
    report = {"parameters": n_params, "iterations_this_run": done,
             "wall_time_s": round(wall, 1), "iterations_per_s": round(done / wall, 2) if wall > 0 else None,
             "torch_threads": torch.get_num_threads(), "final_loss": last_loss,
             "command": command}
    path = out / shipped_path("backbone").name
    digest = save_model(path, model.eval(), "backbone", arch, dataclasses.asdict(recipe), report)
    log(f"done: {done} iterations in {wall:.0f} s ({done / max(wall, 1e-9):.2f} it/s); wrote {path} (sha256 {digest})")
    return path


def classifier_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` whose arg-max logit is the label."""
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).double().mean())


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each image moved by (dy, dx) in {-1, 0, 1}^2, uncovered pixels = background (-1)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    d = torch.randint(0, 3, (x.shape[0], 2), generator=g)
    rows = d[:, 0, None] + torch.arange(8)[None, :]
    cols = d[:, 1, None] + torch.arange(8)[None, :]
    n = torch.arange(x.shape[0])[:, None, None]
    return padded[n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def train_classifier(out: "str | Path", recipe: ClassifierRecipe = ClassifierRecipe(), *, progress: bool = True,
                     log: Callable[..., None] = print) -> Path:
    """Train the feature classifier; returns the written ``digits_classifier.safetensors``."""
    out = Path(out)
    images, labels = load_digits_split("train")
    test_images, test_labels = load_digits_split("held-out")
    torch.manual_seed(recipe.seed)
    model = DigitsClassifier(recipe.width, recipe.feature_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    bar = _progress(recipe.iters, "classifier", progress)
    t0 = time.perf_counter()
    for step in range(recipe.iters):
        g = step_generator(recipe.seed, step)
        idx = torch.randint(0, images.shape[0], (recipe.batch_size,), generator=g)
        x = _shift(images[idx], g)
        for group in opt.param_groups:
            group["lr"] = recipe.lr * 0.5 * (1.0 + math.cos(math.pi * step / recipe.iters))
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
    bar.close()
    wall = time.perf_counter() - t0
    model.eval()
    acc_train = classifier_accuracy(model, images, labels)
    acc_test = classifier_accuracy(model, test_images, test_labels)
    report = {"wall_time_s": round(wall, 1),
             "iterations_per_s": round(recipe.iters / wall, 2), "train_accuracy": acc_train,
             "held_out_accuracy": acc_test, "held_out_images": int(test_labels.numel()),
             "command": "python -m adapters.torch_sit.digits.train classifier"}
    path = out / shipped_path("classifier").name
    digest = save_model(path, model, "classifier", model.config(), dataclasses.asdict(recipe), report)
    log(f"done: {recipe.iters} iterations in {wall:.0f} s; accuracy: training split {acc_train:.4f}, held-out "
        f"{acc_test:.4f} ({test_labels.numel()} images); wrote {path} (sha256 {digest})")
    return path


def evaluate_backbone(weights: "str | Path | None" = None, guidance: Sequence[float] = (1.0, 1.5, 2.0, 3.0),
                      n: int = 500, steps: int = 100, seed: int = 0, log: Callable[..., None] = print) -> list[dict]:
    """Quality of a digits SiT (None: the shipped one): ``n`` samples with labels ``i mod 10`` by
    ``steps`` uniform Euler steps at each guidance scale, scored by the shipped classifier (class
    accuracy) and by the Fréchet distance of its features to the held-out real digits."""
    import baquad

    from .model import digits_sit_backbone, load_digits_classifier
    from ..imagenet.metrics import frechet_distance_of_features

    bb, clf = digits_sit_backbone(weights), load_digits_classifier()
    with torch.no_grad():
        real = clf.features(load_digits_split("held-out")[0]).double().numpy()
        train_feats = clf.features(load_digits_split("train")[0]).double().numpy()
    log(f"Fréchet distance, training split vs held-out real digits: {frechet_distance_of_features(train_feats, real):.3f}")
    x0 = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(n) % 10
    ts = [1.0 - k / steps for k in range(steps + 1)]
    rows = []
    for s in guidance:
        with torch.no_grad():
            x = baquad.solve(bb.vfield(labels=y, guidance_scale=s), x0, ts, method="euler").x
            acc = float((clf(x).argmax(1) == y).double().mean())
            fd = frechet_distance_of_features(clf.features(x).double().numpy(), real)
        rows.append({"guidance": s, "accuracy": acc, "frechet_held_out": fd})
        log(f"guidance {s:g}: Euler {steps} steps, {n} samples: class accuracy {100 * acc:.1f}%, Fréchet distance "
            f"to the held-out digits {fd:.2f}")
    return rows


def _add_recipe_flags(p: argparse.ArgumentParser, recipe_cls: type) -> None:
    for f in dataclasses.fields(recipe_cls):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=f.default)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.torch_sit.digits.train", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("backbone", help="train the digits SiT by flow matching", formatter_class=HelpFormatter)
    b.add_argument("--out", type=Path, required=True, help="output directory (checkpoint, weights, SHA256SUMS)")
    b.add_argument("--ckpt-every", type=int, default=500, help="checkpoint every N iterations (0: at the end only)")
    g = b.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                   help="resume from OUT/checkpoint.safetensors (default: whenever it exists)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const=False, help="start afresh")
    _add_recipe_flags(b, BackboneRecipe)
    b.add_argument("--depth", type=int, default=DIGITS_SIT_CONFIG.depth)
    b.add_argument("--hidden-size", type=int, default=DIGITS_SIT_CONFIG.hidden_size)
    b.add_argument("--num-heads", type=int, default=DIGITS_SIT_CONFIG.num_heads)
    b.add_argument("--mlp-ratio", type=float, default=DIGITS_SIT_CONFIG.mlp_ratio)
    c = sub.add_parser("classifier", help="train the feature classifier", formatter_class=HelpFormatter)
    c.add_argument("--out", type=Path, required=True, help="output directory (weights, SHA256SUMS)")
    _add_recipe_flags(c, ClassifierRecipe)
    e = sub.add_parser("evaluate", help="class accuracy and Fréchet distance of a digits SiT's Euler samples",
                       formatter_class=HelpFormatter)
    e.add_argument("--weights", type=Path, default=None, help="a digits_sit.safetensors (default: the shipped one)")
    e.add_argument("--guidance-scale", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0], help="guidance scales")
    e.add_argument("--n", type=int, default=500, help="samples per guidance scale")
    e.add_argument("--steps", type=int, default=100, help="Euler steps")
    for q in (b, c, e):
        q.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the same bytes on every rerun on one machine)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "backbone":
        recipe = BackboneRecipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BackboneRecipe)})
        config = DIGITS_SIT_CONFIG.replace(depth=args.depth, hidden_size=args.hidden_size, num_heads=args.num_heads,
                                           mlp_ratio=args.mlp_ratio)
        train_backbone(args.out, recipe, config, ckpt_every=args.ckpt_every, resume=args.resume,
                       progress=not args.no_progress)
    elif args.what == "classifier":
        recipe = ClassifierRecipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClassifierRecipe)})
        train_classifier(args.out, recipe, progress=not args.no_progress)
    else:
        evaluate_backbone(args.weights, args.guidance_scale, args.n, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
