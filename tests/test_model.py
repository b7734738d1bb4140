import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hvdlm import model as model_module
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
    assert logits is None and model(x)[0].shape == (3, 16, 50)  # training needs the loss only
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
        # what hvdlm trains: the embedding padded to 50,304 rows (model_shape's vocab_multiple 64)
        padded = GPT(GPTConfig(vocab_size=50257, vocab_multiple=64, **PRESETS["gpt2"]))
        assert padded.num_params() == by_hand(50304, 1024, 12, 768) == 124_373_760
        assert GPT(GPTConfig(vocab_size=256, **PRESETS["mini"])).num_params() == by_hand(256, 256, 6, 384)


def test_generate_appends_tokens_within_vocabulary():
    model = small().eval()
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 20, top_k=5,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 21)
    assert int(out.max()) < 50


def test_generate_never_emits_a_padding_token():
    """14 padding rows of 64, at zero: their logit 0 beats the real tokens' small ones, were they
    sampled; 60 draws over all tokens would hit one."""
    model = small(vocab_multiple=64).eval()
    assert model.tok_emb.weight.shape[0] == 64 and not model.tok_emb.weight[50:].any()
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), 15, top_k=None, temperature=2.0,
                         generator=torch.Generator().manual_seed(0))
    assert int(out.max()) < 50


def twins(vocab: int, multiple: int, seed: int = 0, **kw) -> tuple[GPT, GPT]:
    """A model padded to ``multiple`` and an unpadded one with the same real weights."""
    torch.manual_seed(seed)
    padded = small(vocab_size=vocab, vocab_multiple=multiple, **kw)
    plain = small(vocab_size=vocab, **kw)
    state = padded.state_dict()
    plain.load_state_dict({**state, "tok_emb.weight": state["tok_emb.weight"][:vocab],
                           "head.weight": state["tok_emb.weight"][:vocab]})
    return padded, plain


def grads(model: GPT) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("vocab, multiple, batch, rows_per_width", [
    (50, 1, 3, 1),  # 48 tokens in chunks of 16: three
    (97, 8, 3, 2),  # 7 padding rows; a vocabulary that is no multiple of anything here; 48 tokens in 32 + 16
    (200, 64, 1, 100),  # one chunk
])
def test_loss_and_every_gradient_equal_cross_entropy_on_the_whole_fp32_logits(
        vocab, multiple, batch, rows_per_width, monkeypatch):
    """The chunked loss against torch's cross_entropy over the full logits (computed apart, from the
    logits the model returns), and the padded model against its unpadded twin."""
    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 0)  # chunks of rows_per_width x n_embd tokens
    monkeypatch.setattr(model_module, "LOSS_CHUNK_ROWS_PER_WIDTH", rows_per_width)
    padded, plain = twins(vocab, multiple)
    x, y = (torch.randint(0, vocab, (batch, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2))

    _, loss = padded(x, y)
    loss.backward()
    ours = grads(padded)
    padded.zero_grad()
    logits, _ = padded(x)
    assert logits.shape == (batch, 16, vocab)
    reference = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    for name, g in grads(padded).items():
        torch.testing.assert_close(ours[name], g, rtol=1e-5, atol=1e-7, msg=name)

    _, twin = plain(x, y)
    twin.backward()
    torch.testing.assert_close(loss, twin, rtol=1e-6, atol=1e-6)
    for name, g in grads(plain).items():
        torch.testing.assert_close(ours[name][:vocab] if name == "tok_emb.weight" else ours[name], g,
                                   rtol=1e-5, atol=1e-7, msg=name)
    assert not ours["tok_emb.weight"][vocab:].any()  # the padding rows learn nothing: they stay zero


def test_loss_under_bf16_autocast_is_close_to_the_fp32_reference(monkeypatch):
    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 0)
    monkeypatch.setattr(model_module, "LOSS_CHUNK_ROWS_PER_WIDTH", 1)  # 3 chunks
    model = small(vocab_size=97, vocab_multiple=64)
    x, y = (torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, y)
    assert loss.dtype == torch.float32
    loss.backward()
    ours = grads(model)
    model.zero_grad()
    logits, _ = model(x)  # fp32 throughout
    reference = F.cross_entropy(logits.float().reshape(-1, 97), y.reshape(-1))
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=0, atol=2e-2)
    for name, g in grads(model).items():
        assert (ours[name] - g).norm() <= 0.05 * g.norm() + 1e-6, name


class _Largest(TorchDispatchMode):
    """The most elements of any tensor an op returns, forward and backward."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_the_loss_holds_no_tensor_the_size_of_the_batchs_logits(monkeypatch):
    """No op makes, and the backward keeps, a (tokens x vocabulary) tensor: the largest tensor is the
    same at 4 and 16 sequences (a chunk's logits, or the embedding's gradient)."""
    monkeypatch.setattr(model_module, "LOSS_CHUNK_BYTES", 0)
    vocab = 1000
    model = small(vocab_size=vocab, vocab_multiple=64, n_embd=8)  # chunks of 16 tokens
    largest, saved = [], []
    for batch in (4, 16):
        x = torch.randint(0, vocab, (batch, 16), generator=torch.Generator().manual_seed(batch))
        sizes = []
        with _Largest() as seen:
            with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
                _, loss = model(x, x)
            loss.backward()
        largest.append(seen.numel)
        saved.append(max(sizes))
    logits = 16 * 16 * vocab
    assert largest[0] == largest[1] < logits / 10, largest
    assert max(saved) < logits / 10, saved


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = small(dropout=0.5)
    x = torch.randint(0, 50, (2, 16))
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])
