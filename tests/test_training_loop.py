"""The training loop does what a plain PyTorch loop does, bit for bit; a kill -9 mid-epoch then the
same command ends with the weights of an uninterrupted run; PGD-AT and TRADES are the papers' objectives."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from robustbench_rpc.attacks import get_attack
from robustbench_rpc.cli.commands import main
from robustbench_rpc.data import digits32
from robustbench_rpc.data.subsets import stratified_indices
from robustbench_rpc.models import load_model, read_checkpoint_metadata
from robustbench_rpc.training import Settings, build_recipe, get_objective, train
from robustbench_rpc.training.data import shift
from robustbench_rpc.training.state import atomic_write

TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _plain_loop(n_images: int, epochs: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The shipped micro checkpoints' training (train.py before the training room), written out plainly."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ds = digits32("train")
    keep = torch.as_tensor(stratified_indices(ds.labels.tolist(), n_images))
    x_all, y_all = ds.images[keep], ds.labels[keep]
    model = load_model("symvit_micro_patch4_32", **TINY)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.05},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=3e-3)
    steps = math.ceil(len(x_all) / 64)
    total, warm = epochs * steps, 1 * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(shift(x_all[idx], 2, gen)), y_all[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
    return {k: v.detach() for k, v in model.model.state_dict().items()}


def test_the_loop_is_a_plain_pytorch_loop_bit_for_bit(tmp_path):
    recipe = build_recipe(None, {"model.name": "symvit_micro_patch4_32", "model.kwargs": TINY, "data.limit": 160,
                                 "optim.epochs": 2, "optim.warmup_epochs": 1, "validation.limit": 32,
                                 "validation.steps": 2})
    res = train(recipe, tmp_path / "o", Settings(progress=False), log=lambda _: None)
    ours = load_file(res["last_checkpoint"])
    ref = _plain_loop(160, 2)
    assert sorted(ours) == sorted(ref)
    assert all(torch.equal(ours[k], ref[k]) for k in ref)  # validating (PGD included) changes nothing either
    meta = read_checkpoint_metadata(res["last_checkpoint"])
    assert meta["build"] == {"model": "symvit_micro_patch4_32", "kwargs": TINY, "attention": None, "plugins": []}
    assert meta["recipe_sha256"] == recipe.sha256() and len(meta["metrics"]) == 2
    assert meta["data"]["dataset"] == "digits32" and len(meta["data"]["sha256"]) == 64
    row = meta["metrics"][-1]
    assert row["clean_lo"] <= row["clean_acc"] <= row["clean_hi"] and row["n_val"] == 32
    assert row["pgd_acc"] <= row["clean_acc"]
    with open(tmp_path / "o" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    assert (tmp_path / "o" / "curves.png").stat().st_size > 1000


def _cli(out: Path) -> list[str]:
    return [sys.executable, "-m", "robustbench_rpc", "train", "--model", "symvit_micro_patch4_32",
            *[a for k, v in TINY.items() for a in ("--model-arg", f"{k}={v}")], "--objective", "pgd-at",
            "--set", "objective.steps=2", "--set", "objective.step_ramp_epochs=1", "--set", "optim.ema_decay=0.9",
            "--set", "data.limit=512", "--epochs", "2", "--set", "validation.limit=32", "--set", "validation.steps=2",
            "--no-progress", "--out", str(out)]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if not k.endswith("_s") and k != "images_per_s"} for r in csv.DictReader(f)]


def test_kill_9_mid_epoch_then_the_same_command_gives_the_uninterrupted_weights(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the uninterrupted reference, here, with the subprocesses' one thread
    try:
        assert main(_cli(tmp_path / "ref")[3:]) == 0
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # epoch 1 is committed when its line is printed; epoch 2 has begun
        if line.startswith("epoch 1/2"):
            break
    else:
        pytest.fail("the training ended before epoch 1 was reported")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_rows(out)) == 1  # killed inside epoch 2: only epoch 1 had finished
    again = subprocess.run(_cli(out), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming after epoch 1/2" in again.stdout
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(tmp_path / "ref" / name), load_file(out / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _rows(out) == _rows(tmp_path / "ref")  # the same losses and validation numbers, epoch by epoch


def test_an_interrupted_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "state.pt"
    atomic_write(target, lambda tmp: tmp.write_text("old"))

    def torn(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, torn)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return load_model("symvit_micro_patch4_32", **TINY).train()


def _params(**kw) -> SimpleNamespace:
    return SimpleNamespace(**{"eps": 8 / 255, "steps": 3, "step_size": 2 / 255, "random_start": True,
                              "step_ramp_epochs": 0, "beta": 6.0, **kw})


def test_pgd_at_inner_maximisation_is_the_projects_pgd():
    """Madry et al.'s adversary: the same images as ``get_attack('pgd')`` from the same random start."""
    model = _tiny_model()
    ds = digits32("test")
    x, y = ds.images[:16], ds.labels[:16]
    obj = get_objective("pgd-at")(_params())
    torch.manual_seed(5)
    ours = obj.adversarial_images(model, x, y, epoch=3)
    torch.manual_seed(5)
    ref = get_attack("pgd", eps=8 / 255, steps=3, alpha=2 / 255, random_start=True, progress=False)(model, x, y)
    assert model.training  # the inner maximisation ran in eval mode and restored training mode
    assert torch.allclose(ours, ref, atol=1e-6)
    assert (ours - x).abs().max() <= 8 / 255 + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_ares_step_ramp():
    obj = get_objective("pgd-at")(_params(step_size=3 / 255, step_ramp_epochs=5))
    assert [obj.step_size(e) * 255 for e in range(7)] == pytest.approx([0, 0.6, 1.2, 1.8, 2.4, 3, 3])


def _trades_py(model, x, y, step_size, epsilon, perturb_steps, beta):
    """yaodongyu/TRADES trades.py ``trades_loss`` (l_inf), with the CPU in place of ``.cuda()``."""
    criterion_kl = torch.nn.KLDivLoss(reduction="sum")
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn(x.shape).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - epsilon), x + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    return loss_natural + beta * loss_robust


def test_trades_is_trades_py():
    ds = digits32("test")
    x, y = ds.images[:16], ds.labels[:16]
    model = _tiny_model()
    torch.manual_seed(9)
    ref = _trades_py(model, x, y, 2 / 255, 8 / 255, 3, 6.0)
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch.manual_seed(9)
    ours, _ = get_objective("trades")(_params()).loss(model, model, x, y, epoch=0)
    grads = torch.autograd.grad(ours, list(model.parameters()))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, ref_grads))
