"""One process: the training step (forward, backward, AdamW) of hvdlm's GPT at the `mini` shape,
timed; prints the median step and this process's peak RSS. Which hvdlm: PYTHONPATH."""
import json, resource, statistics, sys, time, dataclasses
import torch
import hvdlm, hvdlm.model as M
from hvdlm.config import OptimConfig
from hvdlm.optim import build_optimizer
label, vocab, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(2)
torch.manual_seed(0)
shape = dict(M.PRESETS["mini"], vocab_size=vocab)
if "vocab_multiple" in {f.name for f in dataclasses.fields(M.GPTConfig)}:
    shape["vocab_multiple"] = int(sys.argv[5]) if len(sys.argv) > 5 else 64
model = M.GPT(M.GPTConfig(**shape))
opt = build_optimizer(model, OptimConfig(), 1e-3)
T = shape["block_size"]
g = torch.Generator().manual_seed(1)
times = []
for i in range(steps + 1):
    x = torch.randint(0, vocab, (batch, T), generator=g); y = torch.randint(0, vocab, (batch, T), generator=g)
    t0 = time.perf_counter()
    _, loss = model(x, y)
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    if i:  # the first step warms up
        times.append(time.perf_counter() - t0)
print(json.dumps({"label": label, "vocab": vocab, "batch": batch, "rows": model.tok_emb.weight.shape[0],
                  "step_ms": round(statistics.median(times) * 1e3, 1), "min_ms": round(min(times) * 1e3, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "hvdlm": hvdlm.__file__}))
