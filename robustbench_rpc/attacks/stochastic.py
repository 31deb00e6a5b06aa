"""Stochastic models: detection and expectation over transformation (EOT).

A model whose logits differ between two identical forward passes in eval mode (dropout left on, noise
injection, random input transforms) cannot be evaluated with a single gradient sample; wrap it in
``EOTModel`` (Athalye, Carlini & Wagner, ICML 2018, arXiv:1802.00420), which averages over samples.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import eval_mode
from .evaluate import check_finite


@torch.no_grad()
def detect_stochastic(model: nn.Module, images: torch.Tensor, *, passes: int = 2, rtol: float = 1e-5,
                      atol: float = 1e-6) -> bool:
    """True if the logits of ``passes`` identical forward passes (eval mode) are not all equal (up to
    float tolerance, so nondeterministic GPU kernels are not mistaken for randomness). NaN/inf logits raise
    ``NonFiniteLogitsError`` (they differ from themselves, and are not randomness)."""
    if passes < 2:
        raise ValueError(f"passes must be >= 2, got {passes}")
    device = next((p.device for p in model.parameters()), images.device)
    x = images.to(device)
    with eval_mode(model):
        where = "while checking whether it is stochastic (identical forward passes)"
        first = model(x).float()
        check_finite(first, where)
        for _ in range(passes - 1):
            again = model(x).float()
            check_finite(again, where)
            if not torch.allclose(first, again, rtol=rtol, atol=atol):
                return True
    return False


class EOTModel(nn.Module):
    """Averages a stochastic model over ``samples`` forward passes.

    ``average="probs"`` (default) returns log(mean softmax), i.e. logits of the averaged predictive
    distribution; ``average="logits"`` returns the mean logits. Gradients flow through every sample, so
    gradient attacks on the wrapper are EOT attacks.
    """

    def __init__(self, model: nn.Module, samples: int = 10, average: str = "probs"):
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        if average not in ("probs", "logits"):
            raise ValueError(f"average must be 'probs' or 'logits', got {average!r}")
        self.model, self.samples, self.average = model, samples, average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = torch.stack([self.model(x).float() for _ in range(self.samples)])
        if self.average == "logits":
            return outs.mean(0)
        return torch.logsumexp(outs.log_softmax(dim=-1), dim=0) - torch.log(torch.tensor(float(self.samples)))
