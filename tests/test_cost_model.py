"""analysis/cost_model.py counts what a GPU would run (issue 24).

Truths used: ``FlopCounterMode``'s totals on small models; the FLOPs of attention from its
definition (two batched products of 2 B H N^2 d each); bytes counted by hand for a Linear + GELU
(input, weight, bias and output of the product; GELU reads and writes the output), a broadcast
add and attention (fused: q, k, v and the output; math path: at least the N x N scores written
and read); the rows of a step from the Gauss-Lobatto-4 nodes written out, 0, (5 - sqrt 5)/10,
(5 + sqrt 5)/10, 1, and the times of a uniform 10-interval grid.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adapters.torch_sit.sidenet.networks import MLPSideNet
from analysis import cost_model

F32 = 4  # bytes of a float32


def flop_counter_total(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", ["mlp", "conv", "sidenet"])
def test_flops_are_flop_counter_modes(name):
    torch.manual_seed(0)
    if name == "mlp":
        model, args = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)), (torch.randn(5, 8),)
    elif name == "conv":
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 2, 1))
        args = (torch.randn(2, 3, 6, 6),)
    else:
        model = MLPSideNet(3, hidden=16, depth=2, embed_dim=8, num_classes=4)
        args = (torch.randn(5, 3), torch.randn(5, 3), torch.rand(5), -0.1 * torch.rand(5), torch.tensor([0, 1, 2, 3, 4]))
    got = cost_model.trace(lambda: model(*args), 1).flops
    assert got == flop_counter_total(lambda: model(*args)) > 0


def test_linear_gelu_bytes_by_hand():
    b, n_in, n_out = 5, 8, 16
    model, x = nn.Sequential(nn.Linear(n_in, n_out), nn.GELU()), torch.randn(b, n_in)
    tr = cost_model.trace(lambda: model(x), b)
    product = F32 * (b * n_in + n_in * n_out + n_out + b * n_out)  # input, weight, bias in; output out
    gelu = F32 * (2 * b * n_out)
    assert [(op.name, op.bytes) for op in tr.ops if op.bytes] == [("addmm", product), ("gelu", gelu)]
    assert tr.flops == 2 * b * n_in * n_out


def test_a_broadcast_input_counts_the_memory_it_covers():
    x, bias = torch.randn(6, 4), torch.randn(4)
    tr = cost_model.trace(lambda: x + bias.expand(6, 4), 6)
    assert tr.bytes == F32 * (24 + 4 + 24)


def test_attention_is_fused_exactly_when_the_last_dimension_is_contiguous():
    b, h, n, d = 2, 3, 10, 8
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    flops = 2 * (2 * b * h * n * n * d)  # q k^T and (scores) v
    fused = cost_model.trace(lambda: F.scaled_dot_product_attention(q, k, v), b)
    assert [op.name for op in fused.ops] == ["attention (fused)"]
    assert fused.flops == flops and fused.bytes == 4 * F32 * b * h * n * d

    qt, kt, vt = (x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (q, k, v))  # last stride n, not 1
    assert cost_model.attention_is_fused(q, k, v) and not cost_model.attention_is_fused(qt, kt, vt)
    math_path = cost_model.trace(lambda: F.scaled_dot_product_attention(qt, kt, vt), b)
    assert "attention (fused)" not in [op.name for op in math_path.ops]
    assert math_path.flops == flops
    assert math_path.bytes >= 2 * F32 * b * h * n * n  # the scores, written and read
    odd = torch.randn(b, h, n, 6)  # a head dimension that is no multiple of 8
    assert not cost_model.attention_is_fused(odd, odd, odd)


def test_autocast_rules_cast_products_down_and_norms_up():
    lin, x = nn.Linear(8, 4), torch.randn(3, 8)
    tr = cost_model.trace(lambda: lin(x), 3, torch.bfloat16)
    casts = [op for op in tr.ops if op.name == "_to_copy"]
    # input, weight and bias cast to bfloat16: read 4 bytes, write 2 per number
    assert sorted(op.bytes for op in casts) == sorted(6 * n for n in (3 * 8, 8 * 4, 4))
    (product,) = [op for op in tr.ops if op.name == "addmm"]
    assert product.dtype == torch.bfloat16 and product.bytes == 2 * (3 * 8 + 8 * 4 + 4 + 3 * 4)

    y = torch.randn(3, 8, dtype=torch.bfloat16)
    with torch.no_grad(), cost_model.OpCounter() as counter, cost_model.FunctionLevel(counter, torch.bfloat16):
        out = F.layer_norm(y, (8,))
    assert out.dtype == torch.float32 and counter.ops[0].name == "_to_copy"


def test_rows_of_a_step_follow_the_rule_and_the_scheme():
    nodes = [0.0, (5 - math.sqrt(5)) / 10, (5 + math.sqrt(5)) / 10, 1.0]
    forward = sum(c > 0 for c in nodes)  # 3
    backward = sum(0.5 <= c < 1 for c in nodes)  # 1
    calls = cost_model.solve_calls("gauss-lobatto-4", 10, (0.0, 0.7))
    # scheme B, 10 intervals: 9 bi-anchor (forward and backward probes), the last single-anchor
    assert calls.perception == [forward, backward] * 9 + [forward]
    times = [1 - i / 10 for i in range(10)]  # anchors at t = 1.0, 0.9, ..., 0.1
    assert calls.backbone == [t <= 0.7 + 1e-12 for t in times]
    assert calls.rows() == (10 + 7, 39)
    assert cost_model.solve_calls("gauss-lobatto-4", 10, None).rows() == (10, 39)


def test_roofline_time_of_an_op():
    gpu = dict(bf16=1000.0, tf32=500.0, bandwidth=2.0)
    assert cost_model.op_seconds(cost_model.Op("mm", 10**12, 10**9, torch.bfloat16), gpu) == pytest.approx(1e-3)
    assert cost_model.op_seconds(cost_model.Op("mm", 10**12, 10**9, torch.float32), gpu) == pytest.approx(2e-3)
    assert cost_model.op_seconds(cost_model.Op("add", 0, 10**10, None), gpu) == pytest.approx(5e-3)


def test_quick_run_writes_its_table(tmp_path, capsys):
    assert cost_model.main(["--quick", "--out", str(tmp_path), "--gpu", "h100"]) == 0
    text = (tmp_path / "cost_model.md").read_text()
    assert text.startswith("# python -m analysis.cost_model --quick")
    assert "| patch | bf16 |" in text and "H100 SXM" in text and "H200" not in text


@pytest.mark.parametrize("argv, message", [
    (["--peak-tflops", "900"], "give both for a custom GPU"),
    (["--tf32-tflops", "400"], "only with --peak-tflops"),
    (["--rule", "simpson-7"], "--rule:"),
    (["--gpu", "a100"], "argument --gpu: invalid choice"),
])
def test_bad_flags_are_refused_at_parse_time(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cost_model.main(argv + ["--out", str(tmp_path)])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
