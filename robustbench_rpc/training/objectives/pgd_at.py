"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
Resistant to Adversarial Attacks", ICLR 2018, arXiv:1706.06083): minimise the cross-entropy of the
L-inf PGD adversary's images, max_{||d||_inf <= eps} CE(f(x + d), y).

Inner maximisation: ``steps`` signed-gradient steps of plain cross-entropy (ARES' ``attack_criterion =
'regular'``) from a uniform random start in the eps box (``random_start = false``: from x), model in eval
mode, step size ramped as ARES does (``step_ramp_epochs``). The last iterate is trained on (Madry et al.);
ARES' ``use_best`` (keeping each sample's highest-loss iterate) is not done. Outer loss: cross-entropy with
the recipe's label smoothing, model in training mode.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Objective, eval_mode, linf_ascent, register_objective


@register_objective("pgd-at")
class PGDAT(Objective):

    def adversarial_images(self, bare, x, y, epoch):
        eps = self.p.eps
        start = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1) if self.p.random_start else x

        def ce(adv):
            with self.autocast():
                return F.cross_entropy(bare(adv).float(), y)

        with eval_mode(bare):
            return linf_ascent(ce, x, start, eps, self.step_size(epoch), self.p.steps)

    def loss(self, model, bare, x, y, epoch):
        adv = self.adversarial_images(bare, x, y, epoch)
        with self.autocast():
            logits = model(adv)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing), logits
