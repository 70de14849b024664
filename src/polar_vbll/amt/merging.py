"""AMT's test-time merging: score every pool member on a target task's support examples, keep the most
discriminative, and merge them with data-driven weights into one plain LoRA adapter.

**Score** of member k (its adapter alone on the base): with f_i the support features of a perturbed view of the
support prompts (the official code augments the images; here the prompts' input embeddings get a random shift of
relative radius ``view_radius``) and p_c the mean clean support feature of class c, cos_ic = cos(f_i, p_c):

    intra_k = mean_c mean_{i ∈ c} cos_ic,   inter_k = mean_c mean_{i ∈ c} mean_{c' ≠ c} cos_ic',
    score_k = γ intra_k − (1 − γ) inter_k.

**Weights**: u_k = exp(β (score_k − 1)); the top-k members by u, renormalized to sum to 1.

**Merge**: every member is PiSSA-initialized from the same base, s·(B_k A_k) on the residual W − s·B₀A₀, so its change
of the original weight is s·(B_k A_k − B₀A₀). The merge Σ_k w_k s (B_k A_k − B₀A₀) is exactly the LoRA update
s · B A with B = [w_1 B_1 | … | w_k B_k | −B₀] and A = [A_1; …; A_k; A₀], rank (k + 1) r: a plain LoRA adapter on the
original weights, so every uncertainty head and report works with it.
"""

from __future__ import annotations

import torch


def member_score(clean: torch.Tensor, viewed: torch.Tensor, labels: torch.Tensor, gamma: float) -> float:
    """score_k of the module docstring from clean and viewed support features (M, d) and their classes (M,)."""
    classes = labels.unique()
    prototypes = torch.stack([clean[labels == c].mean(0) for c in classes])  # (C, d)
    cos = torch.nn.functional.normalize(viewed, dim=-1) @ torch.nn.functional.normalize(prototypes, dim=-1).T
    own = (labels[:, None] == classes[None, :]).float()  # (M, C)
    intra = torch.stack([cos[labels == c][:, j].mean() for j, c in enumerate(classes)]).mean()
    if len(classes) < 2:
        return float(gamma * intra)
    others = (cos * (1 - own)).sum(1) / (len(classes) - 1)  # each example's mean cosine to the other prototypes
    inter = torch.stack([others[labels == c].mean() for c in classes]).mean()
    return float(gamma * intra - (1 - gamma) * inter)


def routing_weights(scores: list[float], beta: float, top_k: int) -> dict[int, float]:
    """{member index: weight} of the ``top_k`` members with the largest exp(β (score − 1)), summing to 1."""
    raw = torch.exp(beta * (torch.tensor(scores, dtype=torch.float64) - 1))
    values, chosen = torch.topk(raw, min(top_k, len(scores)))
    values = values / values.sum()
    return {int(k): float(w) for k, w in zip(chosen, values, strict=True)}


def merged_factors(
    members: list[tuple[torch.Tensor, torch.Tensor]], initial: tuple[torch.Tensor, torch.Tensor], weights: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B (out, (k+1) r), A ((k+1) r, in)) with B A = Σ_k w_k (B_k A_k − B₀ A₀) for ``members`` [(B_k, A_k)], the
    shared ``initial`` (B₀, A₀) and ``weights`` w_k summing to 1."""
    b0, a0 = initial
    b = torch.cat([w * bk for w, (bk, _) in zip(weights, members, strict=True)] + [-b0], dim=1)
    a = torch.cat([ak for _, ak in members] + [a0], dim=0)
    return b, a
