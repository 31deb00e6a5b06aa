"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off between Robustness
and Accuracy", ICML 2019, arXiv:1901.08573), as ``trades_loss`` in yaodongyu/TRADES ``trades.py`` computes it:

    loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')) / batch,
    x'   = argmax_{||x' - x||_inf <= eps} KL(softmax f(x) || softmax f(x'))

(``nn.KLDivLoss(log_softmax(f(x')), softmax(f(x)))``: the clean prediction is the reference distribution).
Inner maximisation: from x + 0.001 * N(0, I) (a start at x has zero KL gradient), ``steps`` signed-gradient
steps with projection, model in eval mode; the clean distribution is computed once per batch (trades.py
recomputes the same eval-mode value every step). Outer loss in training mode with gradients through both
terms, as trades.py; the clean and adversarial batches go through the model in one forward (one
DistributedDataParallel forward per backward). The recipe's label smoothing applies to the CE term
(trades.py has none: set ``optim.label_smoothing = 0`` to match it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Objective, eval_mode, linf_ascent, register_objective


@register_objective("trades")
class TRADES(Objective):

    def describe(self, epoch: int) -> str:
        return super().describe(epoch) + f", beta {self.p.beta:g}"

    def adversarial_images(self, bare, x, epoch):
        with eval_mode(bare):
            with torch.no_grad(), self.autocast():
                p_clean = F.softmax(bare(x).float(), dim=1)
            start = x + 0.001 * torch.randn_like(x)

            def kl(adv):
                with self.autocast():
                    return F.kl_div(F.log_softmax(bare(adv).float(), dim=1), p_clean, reduction="sum")

            return linf_ascent(kl, x, start, self.p.eps, self.step_size(epoch), self.p.steps)

    def loss(self, model, bare, x, y, epoch):
        adv = self.adversarial_images(bare, x, epoch)
        with self.autocast():
            logits = model(torch.cat([x, adv])).float()
        clean, robust = logits[: len(x)], logits[len(x):]
        natural = F.cross_entropy(clean, y, label_smoothing=self.label_smoothing)
        kl = F.kl_div(F.log_softmax(robust, dim=1), F.softmax(clean, dim=1), reduction="batchmean")
        return natural + self.p.beta * kl, robust
