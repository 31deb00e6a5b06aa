"""``robustbench-rpc train-head``: a head on a frozen backbone's cached features, reproducibly.

1. Backbone token features (final norm, ``forward_features``) of digits32 train/test are computed once and
   cached (keyed by the backbone's name and checkpoint SHA-256).
2. The head's fixed projection is fitted on the training tokens (PCA, see ``heads.base``).
3. ``--solver fista`` (convex heads): the head's convex program is solved by FISTA + SVT to a duality gap
   <= ``tol`` (``heads.convex``), and the solution is turned into the network's weights (one head per
   singular pair). ``--solver adam`` (any head): the non-convex training objective
   ``mean CE + beta * 1/2 sum ||W||_F^2`` by full-batch Adam from a seeded init.
   ``--compare`` also trains the Adam counterpart of a convex head at the same beta and records both
   objectives (the equivalence check: convex optimum <= any non-convex objective).
4. The checkpoint (safetensors, head weights only) carries the recipe, the certificate and the check.

Deterministic on CPU for a given seed and torch version (FISTA has no randomness; Adam's init is seeded).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .base import Head, get_head
from .convex import fista, one_thread
from ..models import PACKAGED_DIR, load_model, sha256_of
from ..models.checkpoint import resolve_checkpoint
from .model import FORMAT
from ..models.loading import split_spec
from ..data import digits32

DEFAULT_CACHE = Path.home() / ".cache" / "robustbench_rpc" / "features"


@dataclass
class TrainHeadConfig:
    backbone: str                       # NAME[:CKPT]; CKPT 'packaged' = the shipped checkpoint
    head: str
    solver: str | None = None           # fista (convex heads) | adam; default: fista when the head is convex
    beta: float = 1e-3
    proj_dim: int | None = None         # default: the head's own
    head_args: dict[str, Any] = field(default_factory=dict)
    tol: float = 1e-4                   # duality-gap tolerance (nats per sample) for fista
    max_iter: int = 20000
    steps: int = 1000                   # adam: full-batch steps
    lr: float = 1e-2
    seed: int = 0
    compare: bool = False               # convex heads: also train the non-convex counterpart by Adam
    adam_heads: int | None = None       # heads of that counterpart (default: max(8, rank of the convex solution))
    dataset: str = "digits32"


def _backbone_entry(spec: str) -> tuple[str, Path | None, str | None]:
    name, ckpt = split_spec(spec)
    if ckpt == "packaged":
        return name, Path(resolve_checkpoint(name, ckpt)), "packaged"
    if ckpt is None:
        return name, None, None
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    return name, path, str(path.resolve())


@torch.no_grad()
def backbone_features(backbone_spec: str, split: str, cache_dir: str | Path | None = None,
                      log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """Final-norm token features (n, N, D) of digits32 ``split``, computed once and cached."""
    name, path, _ = _backbone_entry(backbone_spec)
    if path is None:
        raise ValueError(f"backbone '{name}' needs a checkpoint (NAME:CKPT or NAME:packaged): a head on random "
                         "features is not what anyone wants to evaluate")
    sha = sha256_of(path)
    cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    file = cache / f"{name}-{sha[:16]}-digits32-{split}.pt"
    if file.is_file():
        return torch.load(file, map_location="cpu", weights_only=True)
    t0 = time.time()
    model = load_model(name, path)
    ds = digits32(split)
    x = (ds.images - model.mean) / model.std
    tokens = torch.cat([model.model.forward_features(x[i:i + 256]) for i in range(0, len(x), 256)])
    out = {"tokens": tokens.float().contiguous(), "labels": ds.labels.clone(), "sample_ids": ds.sample_ids.clone()}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(out, file)
    log(f"cached {split} features {tuple(tokens.shape)} of {name} in {file} ({time.time() - t0:.1f}s)")
    return out


def _chunks(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, size: int = 128) -> torch.Tensor:
    return torch.cat([fn(X[i:i + size]) for i in range(0, len(X), size)])


def objective(head: Head, X: torch.Tensor, y: torch.Tensor, beta: float) -> dict[str, float]:
    """The non-convex training objective of the head's *network* weights, in float64, via its forward."""
    h = head.double()
    with torch.no_grad():
        logits = _chunks(h.logits, X.double())
        loss = float(F.cross_entropy(logits, y))
        pen = float(h.penalty())
    head.float()
    return {"objective": loss + beta * pen, "loss": loss, "penalty": beta * pen}


def _adam(head: Head, X: torch.Tensor, y: torch.Tensor, beta: float, steps: int, lr: float, seed: int,
          Phi: torch.Tensor | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Full-batch Adam on mean CE + beta * penalty from a seeded init (cosine-decayed lr); single-threaded so
    the result does not depend on the machine's core count."""
    with one_thread():
        return _adam_steps(head, X, y, beta, steps, lr, seed, Phi, log)


def _adam_steps(head, X, y, beta, steps, lr, seed, Phi, log):
    gen = torch.Generator().manual_seed(seed)
    head.init_weights(gen)
    params = head.weights()
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    Xf = X.float()
    t0 = time.time()
    for s in range(steps):
        logits = Phi @ head.lifted_weight() if Phi is not None else head.logits(Xf)
        loss = F.cross_entropy(logits, y) + beta * head.penalty().float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if s % 500 == 0 or s == steps - 1:
            log(f"  adam step {s + 1}/{steps}: objective {loss.item():.6f}")
    return {"steps": steps, "lr": lr, "seed": seed, "seconds": round(time.time() - t0, 2)}


@torch.no_grad()
def accuracy(head: Head, tokens: torch.Tensor, y: torch.Tensor) -> float:
    head.eval()
    pred = _chunks(lambda t: head(t).argmax(1), tokens, 256)
    return float((pred == y).float().mean())


def _solver_of(cfg: TrainHeadConfig, cls: type) -> str:
    if cfg.dataset != "digits32":
        raise ValueError("train-head trains on the embedded digits32 data (dataset='digits32')")
    solver = cfg.solver or ("fista" if cls.convex else "adam")
    if solver not in ("fista", "adam"):
        raise ValueError(f"solver must be 'fista' or 'adam', got {solver!r}")
    if solver == "fista" and not cls.convex:
        raise ValueError(f"head '{cfg.head}' has no convex program: train it with --solver adam")
    return solver


def _fit_convex(cfg: TrainHeadConfig, cls: type, head: Head, X, Phi, y, test: dict, name: str,
                log: Callable[[str], None]) -> tuple[dict, dict | None]:
    """FISTA to the certified optimum, the network rebuilt from Z, and (``compare``) its Adam twin."""
    C = head.num_classes
    reg = head.regularizer(cfg.beta)
    log(f"{cfg.head} on {name}: FISTA on {Phi.shape[1]} lifted features x {C} classes, beta {cfg.beta:g}, "
        f"gap tolerance {cfg.tol:g}")
    Zm, cert = fista(Phi, y, C, reg, tol=cfg.tol, max_iter=cfg.max_iter, log=log)
    head.set_from_lifted(Zm)
    certificate = cert.to_dict()
    net = objective(head, X, y, cfg.beta)
    certificate["network_objective"] = net["objective"]  # the rebuilt heads, via their own forward
    log(f"  FISTA: objective {cert.objective:.6f}, duality gap {cert.gap:.2e} (tol {cfg.tol:g}) after "
        f"{cert.iterations} iterations ({cert.seconds}s); network rebuilt from Z: {net['objective']:.6f} "
        f"with {head.config.get('heads', '-')} heads")
    if not (cfg.compare and hasattr(head, "W1")):
        return certificate, None
    m = cfg.adam_heads or max(8, int(head.config.get("heads", 8)))
    twin = cls(dim=head.dim, num_tokens=head.num_tokens, num_classes=C, proj_dim=cfg.proj_dim,
               **{**cfg.head_args, "heads": m})
    twin.load_state_dict({k: v for k, v in head.state_dict().items() if k.startswith("proj_")
                          or k == "gate_matrices"}, strict=False)
    info = _adam(twin, X, y, cfg.beta, cfg.steps, cfg.lr, cfg.seed, Phi.float(), log)
    adam_obj = objective(twin, X, y, cfg.beta)
    check = {"convex_objective": cert.objective, "adam_objective": adam_obj["objective"],
             "adam_minus_convex": adam_obj["objective"] - cert.objective,
             "holds": cert.objective <= adam_obj["objective"] + 1e-9, "adam_heads": m, **info,
             "adam_test_acc": accuracy(twin, test["tokens"], test["labels"].long())}
    log(f"  equivalence check: convex {cert.objective:.6f} <= adam ({m} heads) {adam_obj['objective']:.6f}: "
        f"{check['holds']}")
    return certificate, check


def train_head(cfg: TrainHeadConfig, out: str | Path | None = None, cache_dir: str | Path | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg.head`` on ``cfg.backbone``'s cached features; write the head checkpoint to ``out``
    (default: the package's checkpoints folder for a packaged backbone)."""
    torch.manual_seed(cfg.seed)
    cls = get_head(cfg.head)
    solver = _solver_of(cfg, cls)
    name, path, ckpt_entry = _backbone_entry(cfg.backbone)
    train, test = (backbone_features(cfg.backbone, s, cache_dir, log) for s in ("train", "test"))
    n, N, D = train["tokens"].shape
    y, y_test = train["labels"].long(), test["labels"].long()
    head = cls(dim=D, num_tokens=N, num_classes=int(y.max()) + 1, proj_dim=cfg.proj_dim, **cfg.head_args)
    head.fit_projection(train["tokens"])
    X = _chunks(lambda t: head.project(t.double()), train["tokens"])
    t0 = time.time()
    certificate, check, adam_info = None, None, None
    Phi = _chunks(head.lifted, X) if cls.convex else None
    if solver == "fista":
        certificate, check = _fit_convex(cfg, cls, head, X, Phi, y, test, name, log)
    else:
        adam_info = _adam(head, X, y, cfg.beta, cfg.steps, cfg.lr, cfg.seed,
                          Phi.float() if Phi is not None else None, log)
    net = objective(head, X, y, cfg.beta)
    result = {"train_objective": net["objective"], "train_loss": net["loss"],
              "train_acc": accuracy(head, train["tokens"], y), "test_acc": accuracy(head, test["tokens"], y_test),
              "seconds": round(time.time() - t0, 1)}
    rank = head.rank_info()

    meta = {
        "format": FORMAT, "head": cfg.head, "head_config": head.describe(),
        "backbone": {"name": name, "checkpoint": ckpt_entry, "sha256": sha256_of(path) if path else None,
                     "kwargs": {}},
        "training": {**asdict(cfg), "solver": solver, "adam": adam_info, "dataset": "digits32-train",
                     "objective": "mean cross-entropy + beta * regularizer (see the head's docstring)"},
        "certificate": certificate, "nonconvex_check": check, "result": result,
        "rank": {k: v for k, v in rank.items() if k != "singular_values"},
        "singular_values": rank.get("singular_values"), "torch": torch.__version__,
    }
    if out is None:
        if ckpt_entry != "packaged":
            raise ValueError("pass --out for a head on a backbone that is not packaged")
        out = PACKAGED_DIR / f"{name}+{cfg.head}{'@adam' if solver == 'adam' and cls.convex else ''}.safetensors"
    out = _save_head(head, Path(out), meta)
    log(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB): train acc {result['train_acc']:.4f}, "
        f"test acc {result['test_acc']:.4f}" + (f", ranks {rank['ranks']}" if rank else ""))
    return {"path": str(out), **result, "certificate": certificate, "nonconvex_check": check, "rank": rank}


def _save_head(head: Head, out: Path, meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().float().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
          for k, v in head.state_dict().items()}
    save_file(sd, str(out), metadata={k: json.dumps(v) for k, v in meta.items()})
    return out
