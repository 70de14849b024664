"""Quality retaining (QR, EMTAL's multi-task regulariser): each training example's best logits so far, and a pull of
its current logits towards them, so that a task trained well early does not degrade while the others catch up.

For one task's N training examples, example i keeps a teacher z*_i: its point logits at the earlier visit where its
NLL −log softmax(z_i)[y_i] was lowest ("best historical" logits). When i is seen again with logits z_i,

    L_QR = λ · mean over the batch's examples that have a teacher of KL( softmax(z*_i) ‖ softmax(z_i) ),

the classes a question lacks left out; after the step's loss, z*_i ← z_i (detached) where z_i's NLL is lower than
the teacher's. The teacher of a step therefore comes from earlier steps only, never from the step itself.
"""

from __future__ import annotations

import torch


def masked_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, choice_mask: torch.Tensor) -> torch.Tensor:
    """KL(softmax p ‖ softmax q) (B,) over each row's choices (``choice_mask`` (B, C)); finite gradients for both
    sides even where a choice is absent (the log-ratio is zeroed there before the product, not after)."""
    log_p = torch.log_softmax(p_logits.masked_fill(~choice_mask, float("-inf")), -1)
    log_q = torch.log_softmax(q_logits.masked_fill(~choice_mask, float("-inf")), -1)
    ratio = torch.where(choice_mask, log_p - log_q, torch.zeros_like(log_p))
    return (log_p.exp() * ratio).sum(-1)


class QualityRetaining:
    """The teachers of one task's ``n_items`` training examples over ``n_classes`` classes, and the pull of weight
    ``weight`` (λ) towards them."""

    def __init__(self, n_items: int, n_classes: int, weight: float):
        self.weight = weight
        self.best_logits = torch.zeros(n_items, n_classes)
        self.best_nll = torch.full((n_items,), float("inf"))

    def loss(self, idx: list[int], logits: torch.Tensor, choice_mask: torch.Tensor) -> torch.Tensor | None:
        """λ · the mean KL from the teachers of examples ``idx`` to their ``logits`` (B, C) (with gradients), over
        the examples that have a teacher; None when none has."""
        index = torch.tensor(idx)
        has = torch.isfinite(self.best_nll[index])
        if not has.any():
            return None
        return self.weight * masked_kl(self.best_logits[index[has]], logits[has].float(), choice_mask[has]).mean()

    @torch.no_grad()
    def update(self, idx: list[int], logits: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor) -> None:
        """Keep ``logits`` (B, C) as the teachers of examples ``idx`` whose NLL under them is below their teacher's."""
        log_q = torch.log_softmax(logits.float().masked_fill(~choice_mask, float("-inf")), -1)
        nll = -log_q.gather(1, labels[:, None])[:, 0]
        for row, item in enumerate(idx):  # in order: an example twice in a batch keeps its better logits
            if nll[row] < self.best_nll[item]:
                self.best_nll[item] = nll[row]
                self.best_logits[item] = logits[row].float().masked_fill(~choice_mask[row], 0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"best_logits": self.best_logits, "best_nll": self.best_nll}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.best_logits, self.best_nll = state["best_logits"].clone(), state["best_nll"].clone()
