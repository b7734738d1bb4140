import pytest
import torch

from hvdlm.model import GPT, PRESETS, GPTConfig


def small(**kw):
    cfg = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def test_forward_shapes_and_loss_near_uniform_at_init():
    torch.manual_seed(0)
    model = small()
    x = torch.randint(0, 50, (3, 16))
    logits, loss = model(x, x)
    assert logits.shape == (3, 16, 50)
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.3  # small init: ~uniform


def test_attention_is_causal():
    torch.manual_seed(0)
    model = small().eval()
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 50  # change only the future
    a, _ = model(x)
    b, _ = model(y)
    torch.testing.assert_close(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_output_head_shares_the_token_embedding():
    model = small()
    assert model.head.weight is model.tok_emb.weight
    assert model.num_params() == sum(p.numel() for p in model.parameters())  # the tied weight once


def test_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="longer than the context"):
        small()(torch.zeros(1, 17, dtype=torch.long))


def test_presets_span_tiny_to_gpt2_124m():
    assert set(PRESETS) >= {"tiny", "mini", "gpt2"}
    gpt2 = GPTConfig(vocab_size=50257, **PRESETS["gpt2"])
    def by_hand(V, T, L, C):  # blocks (attention 4C^2, MLP 8C^2, two layer norms), embeddings, final norm
        return L * (12 * C * C + 2 * C) + V * C + T * C + C

    with torch.device("meta"):  # no memory: just count
        assert GPT(gpt2).num_params() == by_hand(50257, 1024, 12, 768) == 124_337_664
        assert GPT(GPTConfig(vocab_size=256, **PRESETS["mini"])).num_params() == by_hand(256, 256, 6, 384)


def test_generate_appends_tokens_within_vocabulary():
    model = small().eval()
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 20, top_k=5,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 21)
    assert int(out.max()) < 50


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = small(dropout=0.5)
    x = torch.randint(0, 50, (2, 16))
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])
