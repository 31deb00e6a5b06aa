"""Reproducible training of the embedded default's small models (``robustbench-rpc train``).

Deterministic on CPU for a given seed and torch version: seeded init, seeded shuffling and augmentation
(random 2-pixel shifts), single-threaded-safe ops only. The checkpoint is written as safetensors with its
recipe (model, kwargs, seed, epochs, lr, accuracies, torch version) in the metadata, so
``robustbench-rpc train --model NAME`` reproduces the shipped files.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .data import digits32
from .models import load_model, save_checkpoint

PACKAGED_CHECKPOINTS = Path(__file__).parent / "checkpoints"


@dataclass
class TrainConfig:
    model: str
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    label_smoothing: float = 0.1
    max_shift: int = 2
    seed: int = 0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # fine-tune: start from this checkpoint (packaged file name or path; sha256 recorded)


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero fill), one shift per image."""
    if max_shift <= 0:
        return x
    B, _, H, W = x.shape
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=gen)
    return torch.stack([pad[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W] for i in range(B)])


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    correct = sum((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return correct / len(images)


def train(cfg: TrainConfig, out: str | Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg.model`` on digits32-train; write ``out`` (default: the package's checkpoints folder)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_set, test_set = digits32("train"), digits32("test")
    model = load_model(cfg.model, **cfg.model_kwargs)
    init_sha = None
    if cfg.init:
        from .models import load_checkpoint, sha256_of

        path = Path(cfg.init)
        if not path.is_file() and (PACKAGED_CHECKPOINTS / cfg.init).is_file():
            path = PACKAGED_CHECKPOINTS / cfg.init
        load_checkpoint(model, path)
        init_sha = sha256_of(path)
        log(f"fine-tuning from {path} (sha256 {init_sha[:12]})")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    x_all, y_all = train_set.images, train_set.labels
    t0 = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=gen)
        running = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x = _shift(x_all[idx], cfg.max_shift, gen)
            loss = F.cross_entropy(model(x), y_all[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == cfg.epochs - 1:
            log(f"epoch {epoch + 1}/{cfg.epochs} loss {running / len(x_all):.4f} "
                f"test acc {accuracy(model, test_set.images, test_set.labels):.4f} ({time.time() - t0:.0f}s)")
    model.eval()
    result = {
        "train_acc": accuracy(model, x_all, y_all),
        "test_acc": accuracy(model, test_set.images, test_set.labels),
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(out) if out else PACKAGED_CHECKPOINTS / f"{cfg.model}.safetensors"
    meta = {"recipe": asdict(cfg), "result": result, "torch": torch.__version__, "dataset": "digits32-train"}
    if init_sha:
        meta["init_sha256"] = init_sha
    save_checkpoint(model, out, metadata=meta)
    log(f"wrote {out} (test acc {result['test_acc']:.4f})")
    return {"path": str(out), **result}
