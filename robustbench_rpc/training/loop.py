"""The training loop: optimizer (AdamW or SGD, weight decay on matrices only), cosine schedule with linear
warm-up stepped per update, label smoothing, gradient-norm clipping, an EMA of the weights (timm's
``ModelEmaV3``), fine-tuning from ``--init``; per epoch validation, ``last``/``best`` weights and the
resumable state.

One step, as the shipped micro checkpoints were trained (``tests/test_training_loop.py`` checks the weights
bit for bit against a plain loop): loss of the objective; ``zero_grad``; backward; clip to
``optim.clip_grad``; optimizer step; scheduler step; EMA update. The learning rate of update ``s`` is
``lr * (s + 1) / W`` during the ``W`` warm-up updates, then ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2``
with ``t`` the fraction of the remaining updates done.

Outputs in ``--out DIR``: ``last.safetensors`` (every epoch), ``best.safetensors`` (best validated epoch by
``validation.select``), ``metrics.csv``, ``curves.png``, ``state.pt`` (see ``state``). With an EMA the
weights files hold the EMA weights, which are also what is validated (as ARES validates its EMA model).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..models import save_checkpoint
from . import state as st
from .data import TrainData, sample_seed
from .datasets import build_data
from .ddp import Ranks
from .logs import EpochLog, epoch_line
from .model import build_model, check_fits
from .objectives import get_objective
from .recipe import Recipe
from .validation import epoch_diagnostics, validate
from ..store.manifest import git_state
from ..store.lock import lock_folder, refuse_foreign_folder


@dataclass
class Settings:
    """How to run a recipe (not part of what it trains): device, precision, workers, console, torchrun."""

    device: str | None = None
    amp: str = "fp32"
    workers: int = 0
    progress: bool | None = None
    rank_timeout: float = 600.0
    plugins: list[str] = field(default_factory=list)
    skip_unreadable: bool = False  # on-disk sets: leave image files that do not decode out (else: refuse)


def make_optimizer(model: nn.Module, o) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """Weight decay on weight matrices and kernels (ndim >= 2), none on biases, norms, tokens' 1-d params."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov), params
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas)), params


def make_schedule(opt: torch.optim.Optimizer, o, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total, warm = o.epochs * steps_per_epoch, o.warmup_epochs * steps_per_epoch
    floor = o.min_lr / o.lr

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return floor + (1 - floor) * (0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


@dataclass
class Job:
    """Everything one training needs, built and checked before its first step."""

    recipe: Recipe
    out: Path
    ranks: Ranks
    model: nn.Module  # the [0, 1]-input module (what is saved)
    net: nn.Module  # the module stepped: ``model``, DistributedDataParallel-wrapped on torchrun
    data: TrainData
    objective: Any
    opt: torch.optim.Optimizer
    params: list[nn.Parameter]
    sched: torch.optim.lr_scheduler.LambdaLR
    ema: Any
    gen: torch.Generator
    record: dict[str, Any]
    settings: dict[str, Any]
    log: Callable[[str], None]
    epoch_log: EpochLog
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 0
    step: int = 0
    git: dict[str, Any] | None = None

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def prepare(recipe: Recipe, out: Path, cfg: Settings, ranks: Ranks, log: Callable[[str], None]) -> Job:
    """Build model, data, objective, optimizer, schedule and EMA, then resume from ``out``'s state."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    model, record = build_model(recipe, cfg.plugins)
    data = build_data(recipe, model.data_config, cfg.workers, cfg.skip_unreadable)
    check_fits(model, data, recipe.model.name)
    if ranks.rank:  # each rank its own random starts; rank 0 keeps the single-process stream

        torch.manual_seed(sample_seed(recipe.seed, -1, ranks.rank))
    model.to(ranks.device)
    objective = get_objective(recipe.objective.name)(recipe.objective, recipe.optim.label_smoothing,
                                                     ranks.autocast)
    opt, params = make_optimizer(model, recipe.optim)
    sched = make_schedule(opt, recipe.optim, data.steps_per_epoch(recipe.optim.batch_size, ranks.world))
    ema = None
    if recipe.optim.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=recipe.optim.ema_decay, use_warmup=recipe.optim.ema_warmup)
    settings = {"device_type": torch.device(ranks.device).type, "amp": ranks.amp, "world_size": ranks.world,
                "threads": torch.get_num_threads(), "workers": cfg.workers}
    if cfg.skip_unreadable:  # which images are trained on: recorded, and a resume must keep it
        settings["skip_unreadable"] = True

    return Job(recipe, out, ranks, model, model, data, objective, opt, params, sched, ema, gen, record, settings,
               log, EpochLog(out, ranks.main, cfg.progress, log), git=git_state() if ranks.main else None)


def resume(job: Job) -> None:
    """Continue from the folder's state if it has one (rank 0 reads it, every rank restores it), then wrap
    the model for torchrun."""
    ranks, out = job.ranks, job.out
    state = ranks.run(lambda: st.load_state(out) if ranks.main else None, "reading the training state")
    state = ranks.broadcast(state, "sending the training state")
    if state is not None:
        if not state.get("checksum_verified"):
            job.log(f"{out / st.STATE_FILE} was written by an older version, without a checksum: resumed unchecked")
        for note in st.check_resume(state, job.recipe.to_dict(), job.settings, out):
            job.log(note)
        restore(job, state)
    job.net = ranks.wrap(job.model)


def restore(job: Job, state: dict[str, Any]) -> None:
    job.model.load_state_dict(state["model"])
    job.opt.load_state_dict(state["optimizer"])
    job.sched.load_state_dict(state["scheduler"])
    if job.ema is not None:
        job.ema.module.load_state_dict(state["ema"])
    if job.ranks.scaler is not None and state.get("scaler"):
        job.ranks.scaler.load_state_dict(state["scaler"])
    job.gen.set_state(state["data_rng"])
    rngs = state["rng"]
    if job.ranks.rank < len(rngs):  # on another rank count the extra ranks keep their fresh streams
        st.set_rng_state(rngs[job.ranks.rank])
    job.history, job.best = list(state["history"]), dict(state["best"])
    job.start_epoch, job.step = int(state["epoch"]), int(state["step"])


def _step(job: Job, x: torch.Tensor, y: torch.Tensor, epoch: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One update; returns (loss, logits) detached."""
    error, loss, logits = None, None, None
    try:
        loss, logits = job.objective.loss(job.net, job.model, x, y, epoch)
        if not torch.isfinite(loss):  # its backward would make every weight NaN, silently
            raise st.TrainingFault(
                f"{where}: the loss is {float(loss.detach())} at learning rate {job.opt.param_groups[0]['lr']:g} "
                f"(optim.lr {job.recipe.optim.lr:g}); training stops "
                "before its weights become NaN: lower optim.lr or clip harder (optim.clip_grad); the last finished "
                "epoch is kept")
    except Exception as e:  # noqa: BLE001 - every rank learns of it below, naming this rank
        error = e
    job.ranks.agree(error, where)
    job.opt.zero_grad(set_to_none=True)
    scaler = job.ranks.scaler
    job.ranks.guarded((scaler.scale(loss) if scaler else loss).backward, f"the backward of {where}")
    clip = job.recipe.optim.clip_grad
    if scaler is not None:
        if clip:
            scaler.unscale_(job.opt)
            torch.nn.utils.clip_grad_norm_(job.params, clip)
        scaler.step(job.opt)
        scaler.update()
    else:
        if clip:
            torch.nn.utils.clip_grad_norm_(job.params, clip)
        job.opt.step()
    job.sched.step()
    job.step += 1
    if job.ema is not None:
        job.ema.update(job.model, step=job.step)
    return loss.detach(), logits.detach()


def train_epoch(job: Job, epoch: int) -> dict[str, Any]:
    """One epoch over this rank's share of the data; loss and accuracy summed over all ranks."""
    r, ranks = job.recipe, job.ranks
    job.model.train()
    lr = job.opt.param_groups[0]["lr"]
    steps = job.data.steps_per_epoch(r.optim.batch_size, ranks.world)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=ranks.device, dtype=torch.float64)
    correct = torch.zeros((), device=ranks.device, dtype=torch.long)
    seen = 0
    bar = job.epoch_log.bar(steps, f"epoch {epoch + 1}/{r.optim.epochs}")
    for i, (x, y) in enumerate(job.data.batches(epoch, job.gen, r.optim.batch_size, ranks.rank, ranks.world)):
        x, y = x.to(ranks.device, non_blocking=True), y.to(ranks.device, non_blocking=True)
        loss, logits = _step(job, x, y, epoch, f"training step {i + 1} of epoch {epoch + 1}")
        loss_sum += loss.double() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        bar.update(1)
        if bar.n % 10 == 0 and job.epoch_log.progress:
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}")
    bar.close()
    totals = ranks.gather(lambda: (float(loss_sum), int(correct), seen), f"the end of epoch {epoch + 1}")
    n = sum(t[2] for t in totals)
    seconds = time.perf_counter() - t0
    return {"epoch": epoch + 1, "lr": lr, "loss": sum(t[0] for t in totals) / n,
            "train_acc": sum(t[1] for t in totals) / n, "train_s": seconds, "images_per_s": n / seconds}


def _selected(row: dict[str, Any], select: str) -> float | None:
    return row.get("pgd_acc" if select == "pgd" else "clean_acc")


def metadata(job: Job, kind: str, epoch: int) -> dict[str, Any]:
    d = job.data
    meta = {**job.record, "recipe": job.recipe.to_dict(), "recipe_sha256": job.recipe.sha256(),
            "recipe_source": job.recipe.source, "checkpoint": {"kind": kind, "epoch": epoch,
                                                               "weights": "ema" if job.ema else "model"},
            "data": {"dataset": d.name, "n_train": d.n_train, "sha256": d.sha256, "validation": d.val_name,
                     **d.describe},
            "dataset": f"{d.name}-train", "metrics": job.history, "settings": job.settings,
            "torch": torch.__version__, "git": job.git}
    if job.record.get("init"):
        meta["init_sha256"] = job.record["init"]["sha256"]
    return meta


def finish_epoch(job: Job, row: dict[str, Any]) -> None:
    """Validate, keep last/best weights, log, and commit the state (the last write of the epoch)."""
    r, ranks, epoch = job.recipe, job.ranks, row["epoch"]
    if epoch % r.validation.every == 0 or epoch == r.optim.epochs:
        row.update(validate(job.eval_model, job.data, r, epoch - 1, ranks))
        row.update(epoch_diagnostics(job.eval_model, job.data, r))  # opt-in: validation.diagnostics
    score = _selected(row, r.validation.select)
    row["best"] = score is not None and score > job.best.get("score", -1.0)
    if row["best"]:
        job.best = {"score": score, "epoch": epoch, "metric": r.validation.select}
    job.history.append(row)
    ranks.run(lambda: _refuse_non_finite_weights(job, epoch), f"checking the weights of epoch {epoch}")
    rngs = ranks.gather(st.rng_state, f"saving the state of epoch {epoch}")
    if not ranks.main:
        return
    out = job.out
    target = out / "last.safetensors"
    try:
        st.atomic_write(target, lambda tmp: save_checkpoint(job.eval_model, tmp, metadata(job, "last", epoch)))
        if row["best"]:
            target = out / "best.safetensors"
            st.atomic_write(target, lambda tmp: save_checkpoint(job.eval_model, tmp, metadata(job, "best", epoch)))
        target = out / "metrics.csv"
        job.epoch_log.write(job.history, final=epoch == r.optim.epochs)
        target = out / st.STATE_FILE
        st.save_state(out, {
            "epoch": epoch, "step": job.step, "model": job.model.state_dict(), "optimizer": job.opt.state_dict(),
            "scheduler": job.sched.state_dict(), "ema": job.ema.module.state_dict() if job.ema else None,
            "scaler": ranks.scaler.state_dict() if ranks.scaler else None, "data_rng": job.gen.get_state(),
            "rng": rngs, "history": job.history, "best": job.best, "recipe": r.to_dict(), "settings": job.settings})
    except OSError as err:  # a full disk: one line naming the file; the previous epoch's files are whole
        raise st.write_fault(target, err, epoch) from None
    job.log(epoch_line(row, r.optim.epochs, f"{r.validation.eps * 255:.3g}/255"))


def _refuse_non_finite_weights(job: Job, epoch: int) -> None:
    """A step can leave inf/NaN weights with a finite loss (the update itself overflowed); such weights are
    never saved as a checkpoint."""
    for module, what in ((job.model, "weights"), (job.ema.module if job.ema else None, "EMA weights")):
        bad = [n for n, t in (module.state_dict().items() if module is not None else ())
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            raise st.TrainingFault(f"epoch {epoch}: {len(bad)} tensor(s) of the {what} are inf or NaN ({bad[0]}"
                                   f"{', ...' if len(bad) > 1 else ''}) after {job.step} steps at optim.lr "
                                   f"{job.recipe.optim.lr:g}: not saved; lower optim.lr; the last finished epoch "
                                   "is kept")


def run(job: Job) -> dict[str, Any]:
    """The remaining epochs of ``job``; returns the last epoch's row with the output paths."""
    r = job.recipe
    if job.start_epoch >= r.optim.epochs:
        job.log(f"{job.out}: already trained ({job.start_epoch}/{r.optim.epochs} epochs); nothing to do")
    elif job.start_epoch:
        job.log(f"{job.out}: resuming after epoch {job.start_epoch}/{r.optim.epochs}")
    for epoch in range(job.start_epoch, r.optim.epochs):
        finish_epoch(job, train_epoch(job, epoch))
    last = dict(job.history[-1]) if job.history else {}
    return {**last, "out": str(job.out), "last_checkpoint": str(job.out / "last.safetensors"),
            "best_checkpoint": str(job.out / "best.safetensors") if job.best else None,
            "best_epoch": job.best.get("epoch")}


def _say(line: str) -> None:
    print(line, flush=True)


def train(recipe: Recipe, out: str | Path, settings: Settings | None = None,
          log: Callable[[str], None] = _say) -> dict[str, Any]:
    """Train ``recipe`` into the folder ``out`` (resuming what it holds); see the module docstring."""
    cfg = settings or Settings()
    out = Path(out)
    ranks = Ranks(cfg.device, cfg.rank_timeout, cfg.amp)
    held: list[Any] = []

    def start() -> Job:
        if ranks.main:  # a folder of the user's or of another command is never written into
            refuse_foreign_folder(out, st.STATE_FILE, "train", writes=st.OUTPUTS, error=st.RecipeError)
        job = prepare(recipe, out, cfg, ranks, log if ranks.main else _quiet)  # no file is written before this
        if ranks.main:
            try:
                out.mkdir(parents=True, exist_ok=True)
                held.append(lock_folder(out))
            except OSError as err:  # read-only, full, not permitted: before any step
                raise st.RecipeError(f"--out {out}: cannot write there ({err.strerror or err})") from None
        return job

    try:
        job = ranks.run(start, "preparing the training")
        resume(job)
        describe(job)
        return run(job)
    finally:
        for lock in held:
            lock.release()
        ranks.close()


def _quiet(_: str) -> None:
    pass


def describe(job: Job) -> None:
    """What is about to be trained, in a few lines (rank 0)."""
    r, d = job.recipe, job.data
    att = job.record["build"]["attention"]
    job.log(f"model {r.model.name}" + (f" + {att['variant']}@{att['layers']}" if att else "") +
            (f", from {job.record['init']['path']}" if job.record.get("init") else "") +
            f", {sum(p.numel() for p in job.params) / 1e6:.3f}M parameters, on {job.ranks.world} x "
            f"{job.ranks.device}" + (f" ({job.ranks.amp})" if job.ranks.amp != "fp32" else ""))
    job.log(f"data {d.name}: {d.n_train} training images ({d.describe['augment']}), validation {d.val_name}; "
            f"{job.objective.describe(r.optim.epochs - 1)}; {r.optim.optimizer} lr {r.optim.lr:g}, "
            f"{r.optim.epochs} epochs x {d.steps_per_epoch(r.optim.batch_size, job.ranks.world)} steps of "
            f"{r.optim.batch_size}; out {job.out}")
