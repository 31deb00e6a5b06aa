"""What an attack cost: forward and backward passes per sample, counted in one wrapper around the model.

Source of the protocol: AttackBench (Cina et al., AAAI 2025; attackbench/AttackBench,
``attack_evaluation/models/benchmodel_wrapper.py``), which counts forwards and backwards in one model wrapper,
never inside the attacks, and caps their sum as a query budget. AttackBench counts calls of the batch; here
every call is also attributed to the samples it carried, because attacks call the model on changing subsets
(early stopping, restarts on the samples still standing): each row of a call is the perturbation of one clean
image of the batch, assigned to the nearest clean image (L2). A row whose nearest and second-nearest clean
images are within 1 % of each other is counted as ``ambiguous`` instead (never silently given to one).
A backward is counted for every row of a call whose input receives a gradient (a tensor hook on the input).

``count_queries(model, attack, x, y)`` runs the attack unchanged on the wrapped model and returns its images and
the per-sample counts; ``query_budget`` (forwards + backwards per sample, as AttackBench's ``n_query_limit``
but per sample) refuses further queries of a sample beyond it: its rows then get zero logits with a graph to the
input, so the attack's bookkeeping goes on and the sample counts as not broken by those queries.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class QueryCounts:
    """Per-sample counts (CPU int64 tensors of length B) and the rows no sample could be given."""

    forwards: torch.Tensor
    backwards: torch.Tensor
    ambiguous: int = 0

    @property
    def queries(self) -> torch.Tensor:
        return self.forwards + self.backwards

    def summary(self) -> dict[str, float]:
        """Mean per sample and total, for forwards, backwards and their sum."""
        return {"forwards_mean": float(self.forwards.float().mean()), "forwards_total": int(self.forwards.sum()),
                "backwards_mean": float(self.backwards.float().mean()), "backwards_total": int(self.backwards.sum()),
                "queries_mean": float(self.queries.float().mean()), "queries_total": int(self.queries.sum()),
                "ambiguous_rows": self.ambiguous}


class QueryCounter(nn.Module):
    """The model, counting the forwards and backwards of each sample of the clean batch ``clean``."""

    def __init__(self, model: nn.Module, clean: torch.Tensor, query_budget: int | None = None):
        super().__init__()
        if query_budget is not None and (isinstance(query_budget, bool) or not isinstance(query_budget, int)
                                         or query_budget < 1):
            raise ValueError(f"query_budget must be an int >= 1 or None, got {query_budget!r}")
        self.model = model
        self.query_budget = query_budget
        self.clean = clean.detach().flatten(1).float()
        self._clean_sq = (self.clean * self.clean).sum(1)
        n = clean.shape[0]
        self.forwards = torch.zeros(n, dtype=torch.int64)
        self.backwards = torch.zeros(n, dtype=torch.int64)
        self.ambiguous = 0

    def _owners(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the clean image each row perturbs, -1 where two clean images are about as close.

        Squared distances by the expansion |a|^2 - 2ab + |b|^2 in float32 with the clean images' |b|^2 kept,
        which is what ``torch.cdist`` itself computes for more than 25 rows, without its slower direct path for
        small batches: 7.6x faster per call at 16 images of 3x32x32, 2.8x at 128, 9.3x and 2.0x at 16 and 64 of
        3x224x224, same owners (``benchmarks/bench_query_owners.py``, one thread of a 2-core AMD EPYC), so the
        wrapper costs an attack's many small forwards (Square's 5000) little."""
        if self.clean.shape[0] == 1:
            return torch.zeros(x.shape[0], dtype=torch.int64)
        flat = x.detach().flatten(1).float()
        clean, clean_sq = self.clean.to(flat.device), self._clean_sq.to(flat.device)
        sq = (flat * flat).sum(1, keepdim=True) - 2 * flat @ clean.T + clean_sq[None]
        two = sq.clamp_min(0).topk(2, dim=1, largest=False)
        clear = two.values[:, 0] < 0.99 ** 2 * two.values[:, 1]  # distance < 0.99 x the second-nearest's
        return torch.where(clear, two.indices[:, 0], -1).cpu()

    def _count(self, table: torch.Tensor, owners: torch.Tensor) -> None:
        known = owners >= 0
        table.index_add_(0, owners[known], torch.ones(int(known.sum()), dtype=torch.int64))
        self.ambiguous += int((~known).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owners = self._owners(x)
        allowed = torch.ones(len(owners), dtype=torch.bool)
        if self.query_budget is not None:
            used = (self.forwards + self.backwards)[owners.clamp_min(0)]
            allowed = (owners < 0) | (used < self.query_budget)
        if allowed.all():
            out = self.model(x)
        else:  # over budget: no meaningful answer, but the graph and the shapes stay (AttackBench does the same)
            keep = allowed.nonzero().squeeze(1).to(x.device)
            inner = self.model(x[keep]) if len(keep) else None
            classes = inner.shape[1] if inner is not None else self._classes(x)
            out = x.flatten(1)[:, :1].expand(-1, classes) * 0
            if inner is not None:
                out = out.index_copy(0, keep, inner.to(out.dtype))
        self._count(self.forwards, owners[allowed])
        seen = self._observe(x, out, owners, allowed)
        if x.requires_grad and torch.is_grad_enabled():
            counted = owners[allowed]

            def on_backward(grad, counted=counted, seen=seen):
                self._count(self.backwards, counted)
                self._observe_grad(grad, seen)
                return grad
            x.register_hook(on_backward)
        return out

    def _observe(self, x: torch.Tensor, out: torch.Tensor, owners: torch.Tensor, allowed: torch.Tensor):
        """A subclass's look at a call's inputs and logits (``PathRecorder``: the margins); what it returns
        reaches ``_observe_grad`` with the gradient of the same call's input."""
        return None

    def _observe_grad(self, grad: torch.Tensor, seen) -> None:
        return None

    def _classes(self, x: torch.Tensor) -> int:
        with torch.no_grad():
            return int(self.model(x[:1]).shape[1])

    def counts(self) -> QueryCounts:
        return QueryCounts(self.forwards.clone(), self.backwards.clone(), self.ambiguous)


def count_queries(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor,
                  query_budget: int | None = None) -> tuple[torch.Tensor, QueryCounts]:
    """(adversarial images, per-sample counts) of ``attack(model, x, y)`` with the model wrapped once."""
    counter = QueryCounter(model, x, query_budget)
    x_adv = attack(counter, x, y)
    return x_adv, counter.counts()
