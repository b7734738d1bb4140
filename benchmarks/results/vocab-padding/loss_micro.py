"""The loss alone (head matmul, cross-entropy, backward to h and W), old against new, interleaved
in one process: N tokens x width C x vocabulary V, fp32, 2 threads."""
import sys, time, statistics
import torch, torch.nn.functional as F
sys.path.insert(0, "/work/main")
from hvdlm.model import chunked_cross_entropy, padded_vocab
torch.set_num_threads(2)
N, C, V, mult = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
Vp = padded_vocab(dict(vocab_size=V, vocab_multiple=mult))
h0 = torch.randn(N, C); W = (torch.randn(V, C) * 0.02).requires_grad_(); Wp = torch.zeros(Vp, C); Wp[:V] = W.detach(); Wp.requires_grad_()
t = torch.randint(0, V, (N,))
def old():
    h = h0.clone().requires_grad_()
    logits = h @ W.t()
    loss = F.cross_entropy(logits.float().view(-1, V), t); loss.backward()
def new():
    h = h0.clone().requires_grad_()
    loss = chunked_cross_entropy(h, Wp, t, V); loss.backward()
res = {"old": [], "new": []}
for i in range(int(sys.argv[5])):
    for name, fn in (("old", old), ("new", new)):
        t0 = time.perf_counter(); fn(); dt = time.perf_counter() - t0
        if i: res[name].append(dt * 1e3)
print(f"N={N} C={C} V={V} rows={Vp}: " + ", ".join(f"{k} median {statistics.median(v):.1f} ms min {min(v):.1f} ms" for k, v in res.items()))
