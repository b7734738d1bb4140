"""A GPT decoder in plain PyTorch, small enough to read in one sitting.

Pre-norm transformer blocks, causal self-attention through ``scaled_dot_product_attention``
(which picks a fused kernel where one exists), learned position embeddings, and the token
embedding tied to the output head as in GPT-2.

Three things a reader of nanoGPT would look for elsewhere:

* the embedding may have more rows than the vocabulary (``vocab_multiple``: GPT-2's 50,257 padded
  to 50,304, a size GPU matmuls tile evenly). The padding rows are never a token: the loss and the
  logits the model returns cover the real vocabulary only, so a padded model computes exactly the
  unpadded one's function, and the padding rows get no gradient (they stay zero);
* the loss is computed a chunk of tokens at a time (``chunked_cross_entropy``), so no fp32 copy of
  the whole batch's logits exists, and none is kept for the backward;
* on CPUs, dropout draws its masks the cheaper way of ``hvdlm.dropout``, and training attention
  with dropout is written out rather than left to torch's unfused CPU path.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from hvdlm.dropout import Dropout, cheap_masks, dropout


@dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 256  # context length in tokens
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2 has them; nanoGPT trains without)
    # GPT-2's own MLP uses the tanh approximation ("gelu_new"); hvdlm trains with the exact one
    activation: str = "gelu"
    norm_eps: float = 1e-5  # LayerNorm's epsilon (torch's default; GPT-2 checkpoints say theirs)
    # the embedding's rows: vocab_size rounded up to a multiple of this. 1 here, so that a shape
    # saved before hvdlm padded (no such key) builds the model it was; runs get 64 (ModelConfig)
    vocab_multiple: int = 1


ACTIVATIONS = ("gelu", "gelu_new")

# The loss's chunk of tokens: as many as 64 MiB of fp32 logits hold (the whole batch at byte
# vocabularies: one chunk, nothing added to a small model's step), but never fewer than
# LOSS_CHUNK_ROWS_PER_WIDTH x n_embd. Each chunk adds its share into the (vocab, n_embd) weight
# gradient, a pass over that matrix; with at least 2 x n_embd rows a chunk's own logits are a few
# times larger than that pass, so it stays a small part of the loss's memory traffic on a GPU
# (GPT-2 at 12 x 1024 tokens: 8 chunks of 1,536 tokens, 309 MB of fp32 logits each, where the
# whole batch's were 2.4 GB, plus the copies cross_entropy made of them).
LOSS_CHUNK_BYTES = 64 * 2**20
LOSS_CHUNK_ROWS_PER_WIDTH = 2


def padded_vocab(shape: dict) -> int:
    """The embedding's rows for a ``model_shape``: the vocabulary rounded up to ``vocab_multiple``."""
    multiple = shape.get("vocab_multiple", 1)
    return -(-shape["vocab_size"] // multiple) * multiple


def fit_vocab(weights: dict, shape: dict) -> dict:
    """A state dict whose token embedding has the real vocabulary's rows, or another padding's,
    with the embedding ``shape`` builds: the real rows, then zero rows (padding rows never reach
    a logit that counts, so their value is free; zero is what training leaves them at)."""
    emb = weights["tok_emb.weight"]
    vocab, rows = shape["vocab_size"], padded_vocab(shape)
    if emb.shape[0] == rows:
        return weights
    fitted = torch.zeros(rows, emb.shape[1], dtype=emb.dtype, device=emb.device)
    fitted[:vocab] = emb[:vocab]
    return dict(weights, **{"tok_emb.weight": fitted, "head.weight": fitted})  # tied: one tensor, two names


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T`` over the first ``vocab`` columns, a chunk of rows at a
    time. The gradients are computed in the forward, chunk by chunk, and kept (as large as ``h``
    and ``weight``, not as the logits); the backward only scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets, vocab: int, rows: int, dtype: torch.dtype, need_grad: bool):
        n = h.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        # autocast off: every cast below is explicit, so the same code runs with and without it
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(dtype)  # cast once, not per chunk (autocast would cache it the same way)
            for start in range(0, n, rows):
                hc, tc = h[start:start + rows].to(dtype), targets[start:start + rows]
                # all the padded rows in the matmul (its speed), the real vocabulary in the softmax
                z = (hc @ w.t())[:, :vocab].float()
                lse = torch.logsumexp(z, dim=1)
                total += (lse - z.gather(1, tc[:, None]).squeeze(1)).sum()
                if need_grad:
                    g = z.sub_(lse[:, None]).exp_()  # the softmax, in place of the logits
                    g[torch.arange(len(tc), device=g.device), tc] -= 1  # d(lse - z_target)/dz
                    g = g.to(dtype)
                    grad_h[start:start + rows] = g @ w[:vocab]
                    grad_w[:vocab] += g.t() @ hc
        ctx.n = n
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n  # the mean's 1/n, applied here: one pass over each gradient, not two
        return grad_h * scale.to(grad_h.dtype), grad_w * scale.to(grad_w.dtype), None, None, None, None, None


def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int,
                          rows: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(h @ weight[:vocab].T, targets)`` (mean over the N rows of ``h``, fp32)
    without the (N, vocab) logits: ``rows`` tokens at a time (default: see ``LOSS_CHUNK_BYTES``),
    the matmuls in the autocast dtype where autocast is on, the softmax in fp32."""
    device = h.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
    rows = rows or max(LOSS_CHUNK_BYTES // (4 * weight.shape[0]), LOSS_CHUNK_ROWS_PER_WIDTH * weight.shape[1])
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _ChunkedCrossEntropy.apply(h, weight, targets, vocab, rows, dtype, need_grad)


# Named sizes, from a model a laptop CPU trains in minutes to GPT-2 small (124M with vocab 50257).
PRESETS: dict[str, dict] = {
    # parameters as the start line counts them: benchmarks/RESULTS.md, "Model sizes"
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "mini": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # nanoGPT's character model's shape
    "small": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),  # GPT-2 small's shape
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),  # GPT-2 medium's shape (355M)
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.training and self.dropout > 0 and cheap_masks(x.device):
            y = self._attend_with_dropout_on_cpu(q, k, v)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.proj(y))

    def _attend_with_dropout_on_cpu(self, q, k, v):
        """Causal attention with dropout on the weights, written out. With dropout, torch's CPU
        attention leaves its fused kernel for a path that draws the mask element by element and
        computes bf16 inputs in fp32; here the matmuls stay in autocast's dtype and the mask is
        ``dropout.keep_mask``'s (what nanoGPT's attention without flash computes, and as exact)."""
        T = q.shape[-2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu_(1)
        att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
        return dropout(att, self.dropout, True) @ v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)
        self.approximate = "tanh" if cfg.activation == "gelu_new" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {cfg.activation!r}")
        if cfg.vocab_multiple < 1:
            raise ValueError(f"vocab_multiple must be at least 1, got {cfg.vocab_multiple}")
        self.cfg = cfg
        self.padded_vocab = padded_vocab(asdict(cfg))
        self.tok_emb = nn.Embedding(self.padded_vocab, cfg.n_embd)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, self.padded_vocab, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying: one matrix, fewer parameters

        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so depth does not blow up
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        with torch.no_grad():  # padding rows at zero, where fit_vocab puts them and training keeps them
            self.tok_emb.weight[cfg.vocab_size:].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Every parameter, the tied embedding once and with its padding rows: what is trained,
        checkpointed and exchanged, and what ``hvdlm plan`` counts (the one count hvdlm prints,
        always with its vocabulary)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Without ``targets``: (logits over the real vocabulary, None). With them: (None, the mean
        cross-entropy in fp32), computed without the batch's logits (training needs the loss only)."""
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than the context ({self.cfg.block_size})")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x)
        h = self.ln_f(x)
        if targets is None:
            return self.head(h)[..., :self.cfg.vocab_size], None  # padding rows are no tokens
        loss = chunked_cross_entropy(h.reshape(-1, h.size(-1)), self.head.weight, targets.reshape(-1),
                                     self.cfg.vocab_size)
        return None, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after the prompt ``idx`` (shape (B, T))."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.cfg.block_size:])
            logits = logits[:, -1, :].float() / max(temperature, 1e-6)
            if top_k:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
