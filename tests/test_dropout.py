"""hvdlm.dropout's CPU masks against torch's dropout and attention: the same distribution and
scaling, gradients through the kept elements only, and the same attention when nothing is dropped."""

import math

import pytest
import torch
import torch.nn.functional as F

from hvdlm import dropout as hd
from hvdlm.model import GPT, GPTConfig


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_a_mask_drops_p_of_the_elements_independently(p):
    torch.manual_seed(0)
    keep = hd.keep_mask(torch.Size([1000, 1001]), p)  # an odd count: the last word's half is cut
    n = keep.numel()
    dropped = 1 - keep.float().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)
    # the two halves of one random word, and neighbouring words, are independent draws
    pairs = (~keep).flatten()[: n - 1]
    both = (pairs[:-1] & pairs[1:]).float().mean().item()
    assert abs(both - p * p) < 5 * math.sqrt(p * p / n)


def test_dropout_scales_the_kept_elements_and_their_gradient_only():
    torch.manual_seed(1)
    x = torch.randn(64, 300, requires_grad=True)
    y = hd.dropout(x, 0.25, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, kept.float() / 0.75)
    assert hd.dropout(x, 0.25, training=False) is x


def test_masks_follow_the_seed():
    torch.manual_seed(7)
    a = hd.keep_mask(torch.Size([10_000]), 0.2)
    torch.manual_seed(7)
    assert torch.equal(a, hd.keep_mask(torch.Size([10_000]), 0.2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_written_out_attention_is_torchs_when_nothing_is_dropped(dtype):
    # p so small that round(p * 65536) = 0: every element kept, so the CPU path must equal torch's
    # fused causal attention without dropout
    torch.manual_seed(2)
    model = GPT(GPTConfig(n_layer=1, n_head=4, n_embd=64, block_size=32, dropout=1e-7))
    attn = model.blocks[0].attn
    q, k, v = (torch.randn(3, 4, 32, 16).to(dtype) for _ in range(3))
    ours = attn._attend_with_dropout_on_cpu(q, k, v)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(ours.float(), theirs.float(), atol=tol, rtol=tol)


def test_a_model_with_dropout_trains_on_the_cpu_path_and_evaluates_on_torchs():
    torch.manual_seed(3)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, dropout=0.2))
    x = torch.randint(0, 256, (4, 16))
    _, a = model(x, x)
    _, b = model(x, x)
    assert a.item() != b.item()  # training: a fresh mask each forward
    a.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(x, x)[1].item() == model(x, x)[1].item()  # no dropout in evaluation
