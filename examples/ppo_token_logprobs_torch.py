"""One PPO-style policy update per round whose log-probs come from the sampler's own distribution.

A toy "language model" (a context embedding, one tanh layer, an LM head) answers
prompts with single tokens; the reward prefers a fixed set of "good" tokens. Every
round: sample answers at ``--temperature`` under the ``--top-k`` / ``--top-p`` mask
(a plain torch sampler), record the old log-probs with
``linear_token_logprobs`` under the SAME temperature and mask (so the first
importance ratio is exactly 1, the point of TRL #4159 / verl #6240), then a few epochs
of the clipped objective ``-min(r A, clip(r, 1-eps, 1+eps) A) - beta H``, with the
log-probs, entropy and all gradients from ``linear_token_logprobs`` (the LM head
fused, ``--chunk-size`` rows of logits at a time). Runs on the CPU in seconds.

    python examples/ppo_token_logprobs_torch.py --rounds 20
"""

from __future__ import annotations

import argparse
import math

import torch

from gpu_softmax.torch import linear_token_logprobs


class TinyPolicy(torch.nn.Module):
    def __init__(self, prompts: int, vocab: int, hidden: int = 32):
        super().__init__()
        self.embed = torch.nn.Embedding(prompts, hidden)
        self.mix = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden, vocab)  # used through its weight and bias only

    def hidden_states(self, prompt: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(self.embed(prompt)))


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The sampler whose distribution the log-probs must match: temperature, top_k, then top_p."""
    z = logits / temperature
    if top_k is not None:
        kth = torch.topk(z, min(top_k, z.shape[-1]), dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, -math.inf)
    if top_p is not None:
        q = torch.softmax(z, dim=-1)
        sorted_q, order = torch.sort(q, dim=-1, descending=True)
        # mass of the more probable classes (exact ties, which float logits almost never have, aside)
        before = torch.cumsum(sorted_q, dim=-1) - sorted_q
        drop = torch.zeros_like(z, dtype=torch.bool).scatter(1, order, before >= top_p)
        z = z.masked_fill(drop, -math.inf)
    return torch.multinomial(torch.softmax(z, dim=-1), 1)[:, 0]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128, help="answers per round")
    ap.add_argument("--vocab", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=4, help="PPO epochs per round")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--chunk-size", type=int, default=64, help="rows of logits that exist at once")
    ap.add_argument("--clip", type=float, default=0.2)
    ap.add_argument("--entropy-bonus", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    prompts = 16
    policy = TinyPolicy(prompts, args.vocab)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-2)
    good = torch.zeros(args.vocab, dtype=torch.bool)
    good[torch.randperm(args.vocab)[: args.vocab // 10]] = True
    opts = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, chunk_size=args.chunk_size)

    rewards, first_ratio_error = [], 0.0
    for _ in range(args.rounds):
        prompt = torch.randint(0, prompts, (args.batch,))
        with torch.no_grad():
            hidden = policy.hidden_states(prompt)
            answer = sample(policy.head(hidden), args.temperature, args.top_k, args.top_p)
            old_logp = linear_token_logprobs(hidden, policy.head.weight, answer, linear_bias=policy.head.bias, **opts)
        reward = good[answer].float()
        advantage = (reward - reward.mean()) / (reward.std() + 1e-6)
        rewards.append(float(reward.mean()))
        for epoch in range(args.epochs):
            logp, entropy = linear_token_logprobs(policy.hidden_states(prompt), policy.head.weight, answer,
                                                  linear_bias=policy.head.bias, return_entropy=True, **opts)
            ratio = torch.exp(logp - old_logp)
            if epoch == 0:  # same weights, same distribution as the sampler: the ratio is 1
                first_ratio_error = max(first_ratio_error, float((ratio.detach() - 1).abs().max()))
            clipped = torch.clamp(ratio, 1 - args.clip, 1 + args.clip)
            loss = -torch.min(ratio * advantage, clipped * advantage).mean() - args.entropy_bonus * entropy.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    print(f"mean reward: first round {rewards[0]:.3f}, last round {rewards[-1]:.3f}; "
          f"largest |ratio - 1| before the first update: {first_ratio_error:.2e}")
    return {"rewards": rewards, "first_ratio_error": first_ratio_error}


if __name__ == "__main__":
    main()
