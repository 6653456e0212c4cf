"""The paper's SideNet size (adapters/torch_sit/sidenet/paper.py, ``design="table4"``; the
default patch design is counted in tests/test_patch_sidenet.py).

Truths used: Table 4 (input 4 channels, base 128, time embedding 256, 4 layers at 256 px and 8
at 512 px), the paper's "about 6M parameters" and REPA SiT-XL/2's 683,242,512 parameters, and a
parameter count written out here layer by layer for the ConvSideNet layout (conv in, per layer 3
AdaGN ResBlocks + attention, output norm and conv, the conditioning MLPs and label table).
"""

from __future__ import annotations

import pytest
import torch

from adapters.torch_sit.backbones import get_backbone
from adapters.torch_sit.sidenet.paper import paper_sidenet, paper_sidenet_config
from adapters.torch_sit.sidenet.networks import build_sidenet

XL2 = 683_242_512


def counted_by_hand(layers: int, classes: int = 1000, guidance: bool = False, c: int = 128, e: int = 256) -> int:
    conv_in = 2 * 4 * c * 9 + c
    resblock = 2 * (e * 2 * c + 2 * c) + 2 * (c * c * 9 + c)  # two AdaGN projections, two 3x3 convs
    attention = 2 * c + (c * 3 * c + 3 * c) + (c * c + c)  # GroupNorm affine, qkv, proj (1x1)
    out = 2 * c + c * 4 * 9 + 4
    mlp = lambda n_in: (n_in * e + e) + (e * e + e)
    cond = mlp(e) + mlp(e + 2) + (classes + 1) * e + (mlp(e) if guidance else 0)
    return conv_in + layers * (3 * resblock + attention) + out + cond


@pytest.mark.parametrize("guidance", [False, True])
def test_256px_sidenet_is_the_papers_size(guidance):
    net = paper_sidenet(resolution=256, guidance=guidance, design="table4")
    cfg = net.config()
    assert (cfg["in_channels"], cfg["base_channels"], cfg["time_embed_dim"], cfg["num_layers"]) == (4, 128, 256, 4)
    assert cfg["num_classes"] == 1000 and cfg["guidance"] is guidance
    n = sum(p.numel() for p in net.parameters())
    assert n == counted_by_hand(4, guidance=guidance)
    assert 5.5e6 < n < 6.5e6  # "about 6M"
    assert 0.8 < 100 * n / XL2 < 1.0  # "about 0.9% of SiT-XL/2"


def test_512px_has_8_layers_and_backbone_defaults():
    assert paper_sidenet_config(resolution=512, design="table4")["num_layers"] == 8
    n = sum(p.numel() for p in paper_sidenet(resolution=512, design="table4").parameters())
    assert n == counted_by_hand(8)
    tiny = get_backbone("repa-sit-tiny")
    cfg = paper_sidenet_config(tiny, guidance=True, design="table4")
    assert cfg["num_classes"] == 10 and cfg["in_channels"] == 4 and cfg["num_layers"] == 4
    assert build_sidenet(cfg).config() == cfg
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        paper_sidenet_config(get_backbone("gmm-ring2d"))


def test_untrained_paper_sidenet_returns_zero():
    net = paper_sidenet(resolution=256, num_classes=3, design="table4")
    x = torch.randn(2, 4, 8, 8)
    g = net(x, torch.randn_like(x), torch.tensor([0.9, 0.3]), torch.tensor([-0.1, 0.2]), torch.tensor([0, 3]))
    assert torch.equal(g, torch.zeros_like(x))  # the zero-initialised output layer gives exact zeros
