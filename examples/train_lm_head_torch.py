"""Train a tiny next-token model whose LM head goes through gst.linear_cross_entropy.

The text is the package's own Python source (it ships with every install: no
download), split into word and punctuation tokens. The model reads the previous
three tokens (embeddings -> one tanh layer) and its output layer's (V, H) weight is
handed to ``gpu_softmax.torch.linear_cross_entropy`` together with the hidden states:
the loss and all gradients come without the (tokens x V) logits ever existing, only
``--chunk-size`` rows of them at a time. At the end the loss is checked against the
unfused ``F.cross_entropy(head(hidden), target)`` and the memory of both is printed.

    python examples/train_lm_head_torch.py --steps 60
    python examples/train_lm_head_torch.py --device cuda --batch 8192 --chunk-size 2048
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

import torch
import torch.nn.functional as F

import gpu_softmax
import gpu_softmax.torch as gst

CONTEXT = 3


def corpus_tokens() -> list[str]:
    """Word and punctuation tokens of every .py file of the installed package."""
    root = Path(gpu_softmax.__file__).resolve().parent
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py")))
    return re.findall(r"\w+|[^\w\s]", text)


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int, embed: int = 32, hidden: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.mix = torch.nn.Linear(CONTEXT * embed, hidden)
        self.head = torch.nn.Linear(hidden, vocab)  # used through its weight and bias only

    def hidden_states(self, context: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(self.embed(context).flatten(1)))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=512, help="tokens per step")
    ap.add_argument("--chunk-size", type=int, default=128, help="rows of logits that exist at once")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)

    tokens = corpus_tokens()
    counts = collections.Counter(tokens)
    vocab = {tok: i for i, (tok, _) in enumerate(counts.most_common())}
    ids = torch.tensor([vocab[t] for t in tokens], device=dev)
    windows = ids.unfold(0, CONTEXT + 1, 1)  # (positions, CONTEXT + 1)
    V = len(vocab)
    print(f"corpus: {len(tokens)} tokens of gpu_softmax's own source, vocabulary V = {V}; device {dev}")

    model = TinyLM(V).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(args.steps):
        batch = windows[torch.randint(0, windows.shape[0], (args.batch,), device=dev)]
        hidden = model.hidden_states(batch[:, :CONTEXT])
        loss = gst.linear_cross_entropy(hidden, model.head.weight, batch[:, CONTEXT], linear_bias=model.head.bias,
                                        chunk_size=args.chunk_size)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % max(1, args.steps // 6) == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")

    with torch.no_grad():
        batch = windows[: args.batch]
        hidden = model.hidden_states(batch[:, :CONTEXT])
        fused = gst.linear_cross_entropy(hidden, model.head.weight, batch[:, CONTEXT], linear_bias=model.head.bias,
                                         chunk_size=args.chunk_size).item()
        unfused = F.cross_entropy(model.head(hidden).float(), batch[:, CONTEXT]).item()
    itemsize = model.head.weight.element_size()
    full = args.batch * V * itemsize
    chunk = min(args.chunk_size, args.batch) * V * itemsize
    print(f"held-out batch: fused loss {fused:.6f}, unfused F.cross_entropy(head(h)) {unfused:.6f}")
    print(f"logits per step: unfused {full / 2**20:.2f} MiB (plus their float32 log-probs for the backward, "
          f"{args.batch * V * 4 / 2**20:.2f} MiB); fused {chunk / 2**20:.2f} MiB at a time "
          f"({args.batch // max(1, min(args.chunk_size, args.batch))}x less)")
    return {"losses": losses, "fused": fused, "unfused": unfused, "vocab": V,
            "saved_bytes": full + args.batch * V * 4 - chunk}


if __name__ == "__main__":
    main()
