"""Heads: SVT prox, the certified FISTA solver, convex <= non-convex at equal beta, the lifted model equals
the network, backbone+head through `run` with white-box gradients reaching the image."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustbench_rpc.heads import HEADS, get_head, svt
from robustbench_rpc.heads.convex import BlockNuclear, SquaredFrobenius, certificate_at, fista
from robustbench_rpc.heads.train import _adam, objective

CONVEX = ["attention", "gated_attention", "mixer"]


def test_registry_has_the_heads():
    assert {"linear", "mlp", "attention", "gated_attention", "mixer"} <= set(HEADS.names())
    with pytest.raises(KeyError, match="Did you mean: attention"):
        get_head("atention")


@pytest.mark.parametrize("shape", [(7, 5), (5, 9), (3, 6, 4)])
def test_svt_matches_explicit_svd(shape):
    g = torch.Generator().manual_seed(0)
    Y = torch.randn(shape, generator=g, dtype=torch.float64)
    tau = 0.7
    got = svt(Y, tau)
    for Yb, Gb in zip(Y.reshape(-1, *shape[-2:]), got.reshape(-1, *shape[-2:])):
        U, S, Vt = np.linalg.svd(Yb.numpy(), full_matrices=False)  # explicit reference
        ref = U @ np.diag(np.maximum(S - tau, 0)) @ Vt
        np.testing.assert_allclose(Gb.numpy(), ref, atol=1e-12)
        # and it is the prox: no perturbation lowers 1/2||Z - Y||^2 + tau ||Z||_*
        f = lambda Z: 0.5 * float(((Z - Yb) ** 2).sum()) + tau * float(torch.linalg.matrix_norm(Z, "nuc"))
        best = f(Gb)
        for _ in range(50):
            assert f(Gb + 1e-3 * torch.randn(Gb.shape, generator=g, dtype=torch.float64)) >= best - 1e-12


def _synthetic(n=160, N=6, D=6, C=3, seed=0):
    """Tokens with a planted attention-style signal (class from a token-correlation pattern) plus noise."""
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(n, N, D, generator=g)
    A = torch.randn(C, D, D, generator=g)
    score = torch.einsum("bta,cak,buk->bc", T, A, T) / N + 0.5 * torch.randn(n, C, generator=g)
    return T, score.argmax(1)


def _fitted(name, T, y, **kw):
    head = get_head(name)(dim=T.shape[-1], num_tokens=T.shape[1], num_classes=int(y.max()) + 1, proj_dim=4, **kw)
    head.fit_projection(T)
    return head, head.project(T.double())


@pytest.mark.parametrize("name", CONVEX + ["linear"])
def test_lifted_model_is_the_network(name):
    """logits of the module == lifted(X) @ Zm(weights): the convex program models exactly this network."""
    T, y = _synthetic()
    head, X = _fitted(name, T, y)
    gen = torch.Generator().manual_seed(1)
    head.init_weights(gen)
    head.double()
    with torch.no_grad():
        torch.testing.assert_close(head.logits(X), head.lifted(X) @ head.to_lifted(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", CONVEX)
def test_convex_solver_certified_and_no_worse_than_adam(name):
    """On a small synthetic set: FISTA reaches the stated gap tolerance; the heads rebuilt from Z have the
    same objective (weight decay = the nuclear-norm term); SGD/Adam on the non-convex head at the same beta
    never beats the convex optimum; the dual value is a true lower bound."""
    T, y = _synthetic()
    beta, tol = 1e-2, 1e-6
    head, X = _fitted(name, T, y)
    Phi = head.lifted(X)
    reg = head.regularizer(beta)
    Zm, cert = fista(Phi, y, 3, reg, tol=tol, max_iter=20000)
    assert cert.converged and 0 <= cert.gap <= tol
    head.set_from_lifted(Zm)
    net = objective(head, X, y, beta)
    assert net["objective"] == pytest.approx(cert.objective, abs=1e-5)  # float32 weights
    # the block ranks the checkpoint reports are those of the solution
    assert sum(reg.ranks(Zm, rtol=1e-9)) == head.config["heads"]
    twin, _ = _fitted(name, T, y, heads=max(8, head.config["heads"]))
    _adam(twin, X, y, beta, steps=600, lr=1e-2, seed=0, Phi=Phi.float(), log=lambda *_: None)
    adam = objective(twin, X, y, beta)["objective"]
    assert cert.objective <= adam + 1e-9
    assert cert.dual <= adam
    # weak duality at any dual point: the certificate at a worse primal point still bounds p* from below
    other = certificate_at(Phi, torch.nn.functional.one_hot(y, 3).double(), 0.5 * Zm, reg)
    assert other["dual"] <= cert.objective + 1e-12


def test_linear_head_certificate_l2():
    T, y = _synthetic(seed=3)
    head, X = _fitted("linear", T, y)
    Phi = head.lifted(X)
    Zm, cert = fista(Phi, y, 3, SquaredFrobenius(1e-2), tol=1e-8, max_iter=20000)
    assert cert.converged
    # stationarity of the smooth problem: grad + beta Z = 0
    P = torch.softmax(Phi @ Zm, 1)
    grad = Phi.T @ (P - F.one_hot(y, 3).double()) / len(y)
    assert float((grad + 1e-2 * Zm).abs().max()) < 1e-4


def test_block_nuclear_dual_scaling_feasible():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(2 * 12, 3, generator=g, dtype=torch.float64)
    reg = BlockNuclear(0.1, lambda Z: Z.reshape(2, 4, 9), lambda B: B.reshape(24, 3))
    t, pen = reg.dual(G)
    assert pen == 0 and float(torch.linalg.matrix_norm((t * G).reshape(2, 4, 9), 2).max()) <= 0.1 + 1e-12


# ---- end to end on the shipped backbone ------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_head(tmp_path_factory):
    from robustbench_rpc.heads.train import TrainHeadConfig, train_head

    d = tmp_path_factory.mktemp("heads")
    cfg = TrainHeadConfig(backbone="symvit_micro_patch4_32:packaged", head="attention", beta=1e-2, proj_dim=4,
                          tol=1e-4)
    res = train_head(cfg, out=d / "h.safetensors", cache_dir=d / "cache", log=lambda *_: None)
    return res


def test_train_head_writes_certificate(trained_head):
    from robustbench_rpc.heads.model import read_head_metadata

    meta = read_head_metadata(trained_head["path"])
    cert = meta["certificate"]
    assert cert["converged"] and cert["gap"] <= cert["tol"] == 1e-4
    assert cert["network_objective"] == pytest.approx(cert["objective"], abs=1e-5)
    assert meta["backbone"]["checkpoint"] == "packaged" and len(meta["backbone"]["sha256"]) == 64
    assert meta["rank"]["ranks"] == [meta["head_config"]["heads"]]
    assert trained_head["test_acc"] > 0.8


def test_backbone_plus_head_gradients_reach_the_image(trained_head):
    from robustbench_rpc.models import load_model

    model = load_model(f"symvit_micro_patch4_32+attention:{trained_head['path']}")
    from robustbench_rpc.data import digits32

    ds = digits32("test")
    x = ds.images[:4].clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), ds.labels[:4])
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.model.backbone.parameters())  # frozen backbone


def test_backbone_plus_head_through_run(trained_head, tmp_path):
    from robustbench_rpc.store.results import ResultsStore

    suite = tmp_path / "s.toml"
    suite.write_text('name = "t"\n[defaults]\ndataset = "digits32"\nbatch_size = 4\n[[evaluation]]\nkind = "clean"\n'
                     '[[evaluation]]\nkind = "attack"\nattack = "pgd"\neps = ["8/255"]\nsteps = 2\n')
    spec = f"symvit_micro_patch4_32+attention:{trained_head['path']}"
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "robustbench_rpc", "run", "--suite", str(suite), "--model", spec,
                           "--limit", "8", "--out", str(tmp_path / "r"), "--no-progress", "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "symvit_micro_patch4_32+attention" in proc.stdout
    with ResultsStore(tmp_path / "r" / "results.sqlite", readonly=True) as s:
        assert len(s.samples()) == 16
        checks = s._frame('SELECT "check", status FROM checks', [])
    assert dict(zip(checks["check"], checks["status"]))["differentiability"] == "pass"
    assert (tmp_path / "r" / "index.html").is_file()  # the report is built for head models too


def test_head_checkpoint_pins_its_backbone(trained_head, tmp_path):
    from robustbench_rpc.models import CheckpointError, load_model

    with pytest.raises(CheckpointError, match="not 'attention' on 'rpc_symvit_micro_patch4_32'"):
        load_model(f"rpc_symvit_micro_patch4_32+attention:{trained_head['path']}")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(trained_head["path"], framework="pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    bb = json.loads(meta["backbone"])
    meta["backbone"] = json.dumps({**bb, "sha256": "0" * 64})
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(f"symvit_micro_patch4_32+attention:{tmp_path / 'bad.safetensors'}")


def test_shipped_heads_are_certified_and_small():
    from robustbench_rpc.evaluation.plan import ModelSpec
    from robustbench_rpc.heads.model import read_head_metadata
    from robustbench_rpc.models import PACKAGED_DIR as PACKAGED
    from robustbench_rpc.evaluation.suite import load_suite

    specs = [s for s in load_suite("convex-heads").defaults["models"] if "+" in s]
    assert len(specs) == 12
    for spec in specs:
        path = ModelSpec.parse(spec).checkpoint  # ':packaged' resolves in the package
        assert path and path.startswith(str(PACKAGED))
        meta = read_head_metadata(path)
        assert __import__("os").path.getsize(path) < 200_000
        if meta["training"]["solver"] == "fista":
            cert = meta["certificate"]
            assert cert["converged"] and cert["gap"] <= cert["tol"]
            assert cert["network_objective"] == pytest.approx(cert["objective"], abs=1e-5)
        check = meta.get("nonconvex_check")
        if check:  # the equivalence: the convex optimum is no worse than the Adam-trained network
            assert check["holds"] and check["convex_objective"] <= check["adam_objective"]


def test_shipped_gated_head_accuracy():
    from robustbench_rpc.data import digits32
    from robustbench_rpc.models import load_model

    from robustbench_rpc.models import PACKAGED_DIR as PACKAGED

    name = "symvit_micro_patch4_32+gated_attention"
    model = load_model(name, checkpoint=PACKAGED / f"{name}.safetensors")
    ds = digits32("test")
    with torch.no_grad():
        acc = float((model(ds.images[:128]).argmax(1) == ds.labels[:128]).float().mean())
    assert acc > 0.9
