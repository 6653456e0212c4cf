"""A user's own backbone factories for the ``--backbone module:factory`` tests (imported with tests/
on the path, as ``python -m adapters.torch_sit.train`` imports it from the working directory)."""

from __future__ import annotations

import torch
from torch import nn

from adapters.torch_sit.backbones import Backbone


class TinyVelocity(nn.Module):
    """v(t, x) on 2-D states: a small MLP on (x, t), time first."""

    def __init__(self, width: int = 32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
        self.calls = 0

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1)) - x


class SampleFirst(TinyVelocity):
    """The same network with diffusers' argument order, forward(sample, timestep)."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return super().forward(timestep, sample)


def make_backbone(width: int = 32) -> Backbone:
    return Backbone.from_module(TinyVelocity(width), f"tiny-velocity-{width}", (2,))


def swapped_backbone() -> Backbone:
    return Backbone.from_module(SampleFirst(), "swapped", (2,))


class TinyConvVelocity(nn.Module):
    """v(t, x) on (3, 8, 8) images: conv3x3(3 + 1 -> 8) on x and a t plane, tanh, conv3x3(8 -> 3), minus x."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.conv1, self.conv2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        plane = t.reshape(-1, 1, 1, 1).to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv2(torch.tanh(self.conv1(torch.cat([x, plane], dim=1)))) - x


def make_image_backbone() -> Backbone:
    return Backbone.from_module(TinyConvVelocity(), "tiny-conv-velocity", (3, 8, 8))
