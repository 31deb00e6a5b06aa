"""The reproduction study's kernel-PCA checks (kpca_alignment, kpca_reconstruction_terms, kpca_eigenvalues)
against a plain re-statement of the study's code (KarahanS/Reproduction-Study-KPCA: scripts/value_vectors.py,
Reconstruction/softmax.py, scripts/eigenvalues.py), written below loop by loop in float64, and against the
paper's Reconstruction/softmax.py where both compute the same thing. Then the kpca-claims suite and report
through the CLI, and the per-epoch diagnostic of a training against ``diagnose`` on that epoch's weights."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from robustbench_rpc.diagnostics import list_diagnostics, run_diagnostics
from robustbench_rpc.diagnostics.kpca_alignment import ALIGNMENT_METRICS, alignment_metrics, kpca_value_matrix
from robustbench_rpc.diagnostics.kpca_eigen import EIG_STATS, VARIANTS, eigen_statistics
from robustbench_rpc.diagnostics.kpca_terms import TERM_METRICS, reconstruction_terms

TOL = 1e-6


# ---- the study's code, re-stated plainly (one image, one head at a time) ------------------------------------

def study_centering(m):
    n = m.shape[0]
    h = torch.eye(n, dtype=m.dtype) - torch.ones(n, n, dtype=m.dtype) / n
    return h @ m @ h


def study_rbf(x):
    gx = x @ x.T
    kx = torch.diag(gx) - gx + (torch.diag(gx) - gx).T
    sigma = math.sqrt(torch.median(kx[kx != 0]))
    return torch.exp(kx * (-0.5 / (sigma * sigma)))


def study_cka(gx, gy):
    hsic = torch.sum(study_centering(gx) * study_centering(gy))
    vx = torch.sqrt(torch.sum(study_centering(gx) * study_centering(gx)))
    vy = torch.sqrt(torch.sum(study_centering(gy) * study_centering(gy)))
    return float(hsic / (vx * vy + 1e-10))


def study_value_vectors(k_bh, v_bh, head_dim, g_eps=0.0):
    """value_vectors.py analyze_layer + compute_value_vector_similarities for one (image, head)."""
    n = k_bh.shape[0]
    k_raw = torch.exp(k_bh @ k_bh.T * (1.0 / math.sqrt(head_dim)))
    g_vals = k_raw.sum(dim=1, keepdim=True)
    one_n = torch.ones(n, n, dtype=k_bh.dtype) / n
    k_phi = k_raw / (g_vals @ g_vals.T + 1e-6)
    k_c = k_phi - one_n @ k_phi - k_phi @ one_n + one_n @ k_phi @ one_n
    eigvals, eigvecs = torch.linalg.eigh(k_c)
    idx = torch.argsort(eigvals.abs(), descending=True)
    a = eigvecs[:, idx][:, :head_dim]
    g = torch.diag(1 / (g_vals[:, 0] + g_eps))
    vhat = g @ a - g @ one_n @ a
    vn = v_bh / (v_bh.norm(2, dim=1, keepdim=True) + 1e-8)
    hn = vhat / (vhat.norm(2, dim=1, keepdim=True) + 1e-8)
    direct = torch.sum(vn * hn, dim=1).mean().item()
    cost = -(vn @ hn.T).numpy()
    r, c = linear_sum_assignment(cost)
    optimal = float(np.mean([-cost[i, j] for i, j in zip(r, c)]))
    return {"align_cos_direct": direct, "align_cos_optimal": optimal,
            "align_linear_cka": study_cka(v_bh @ v_bh.T, vhat @ vhat.T),
            "align_kernel_cka": study_cka(study_rbf(v_bh), study_rbf(vhat)),
            "align_rel_frob": torch.norm(v_bh - vhat, p="fro").item() / torch.norm(v_bh, p="fro").item()}


def study_terms(q, k, v, scale):
    """The study's Reconstruction/softmax.py ``reconstruct`` branch; (B, H) means over tokens."""
    qk = q @ k.transpose(-2, -1) * scale
    qq = q @ q.transpose(-2, -1) * scale
    x = torch.softmax(qk, dim=-1) @ v
    phiq = torch.exp(torch.diagonal(qq, dim1=-2, dim2=-1)) / torch.exp(qk).sum(dim=-1).pow(2)
    h = x.pow(2).sum(dim=-1)
    err = (phiq - h).abs()
    return {"recon_phi_norm": phiq.mean(-1), "recon_h_norm": h.mean(-1), "recon_abs_error": err.mean(-1),
            "recon_rel_error_wrt_h": (err / (h + 1e-8)).mean(-1),
            "recon_rel_error_wrt_phi": (err / (phiq + 1e-8)).mean(-1)}


def paper_terms(q, k, v, scale):
    """The paper's Reconstruction/softmax.py (rachtsy/KPCA_code): num / den with unscaled dot products."""
    qk = q @ k.transpose(-2, -1)
    qq = q @ q.transpose(-2, -1)
    attn = torch.softmax(qk * scale, dim=-1)
    num = torch.exp(torch.diagonal(qq, dim1=-2, dim2=-1))
    den = torch.exp(2 * qk[:, :, :, 0] - torch.log(attn[:, :, :, 0].pow(2)))
    return num / den, (attn @ v).pow(2).sum(-1)


def study_eigen_stats(keys_per_layer, image_id, standardize=True, eps=1e-6, abs_sort=False):
    """eigenvalues.py for one image: per rank, |eigenvalue| averaged over layers and heads; its statistics."""
    head_dim = keys_per_layer[0].shape[-1]
    by_rank = [[] for _ in range(head_dim)]
    for k in keys_per_layer:
        for h in range(k.shape[1]):
            k_bh = k[image_id, h]
            n = k_bh.shape[0]
            if standardize:
                k_bh = (k_bh - k_bh.mean(dim=-1, keepdim=True)) / (k_bh.std(dim=-1, keepdim=True) + 1e-8)
            k_raw = torch.exp(k_bh @ k_bh.T / math.sqrt(head_dim))
            g_vals = k_raw.sum(dim=-1).unsqueeze(1)
            k_phi = k_raw / (g_vals @ g_vals.T + eps)
            one = torch.ones(n, n, dtype=k.dtype) / n
            k_c = k_phi - one @ k_phi - k_phi @ one + one @ k_phi @ one
            eigvals, _ = torch.linalg.eigh(k_c)
            eigvals = eigvals[torch.argsort(eigvals.abs() if abs_sort else eigvals, descending=True)]
            for i, e in enumerate(eigvals.abs()[:head_dim]):
                by_rank[i].append(e.item())
    avg = torch.tensor([np.mean(r) for r in by_rank], dtype=torch.float64)
    return {"max": avg.max().item(), "min": avg.min().item(), "mean": avg.mean().item(),
            "median": torch.median(avg).item()}


def close(a, b, tol=TOL):
    return abs(a - b) <= tol * max(1.0, abs(b))


def _random_qkv(seed, B=2, H=3, N=24, d=8, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    return [spread * torch.randn(B, H, N, d, generator=g, dtype=torch.float64) for _ in range(3)]


# ---- random tensors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed,spread,g_eps", [(0, 1.0, 0.0), (1, 2.5, 0.0), (2, 0.3, 1e-6)])
def test_alignment_equals_the_study_code_on_random_tensors(seed, spread, g_eps):
    _, k, v = _random_qkv(seed, spread=spread)
    d = k.shape[-1]
    got = alignment_metrics(v, kpca_value_matrix(k, d ** -0.5, 1e-6, g_eps))
    for b in range(k.shape[0]):
        for h in range(k.shape[1]):
            ref = study_value_vectors(k[b, h], v[b, h], d, g_eps)
            for m in ALIGNMENT_METRICS:
                assert close(float(got[m][b, h]), ref[m]), (m, b, h, float(got[m][b, h]), ref[m])


def test_kpca_value_matrix_is_exact_when_values_are_the_prediction():
    """V = V_kpca is perfectly aligned by every metric: the comparison cannot pass on unrelated matrices."""
    _, k, _ = _random_qkv(5)
    pred = kpca_value_matrix(k, k.shape[-1] ** -0.5)
    got = alignment_metrics(pred, pred)
    for m in ("align_cos_direct", "align_cos_optimal", "align_linear_cka", "align_kernel_cka"):
        # not exactly 1: the study's + 1e-8 in the row norms weighs on V_kpca's small rows (~1/g)
        assert torch.allclose(got[m], torch.ones_like(got[m]), atol=1e-3), m
    assert float(got["align_rel_frob"].abs().max()) < 1e-12
    shuffled = alignment_metrics(torch.randn_like(pred), pred)
    assert float(shuffled["align_linear_cka"].max()) < 0.9


@pytest.mark.parametrize("seed,spread", [(0, 1.0), (3, 2.0)])
def test_reconstruction_terms_equal_the_study_code_and_the_paper_code(seed, spread):
    q, k, v = _random_qkv(seed, spread=spread)
    scale = q.shape[-1] ** -0.5
    got, ref = reconstruction_terms(q, k, v, scale), study_terms(q, k, v, scale)
    for m in TERM_METRICS:
        assert torch.allclose(got[m], ref[m], rtol=TOL, atol=0), m
    # the paper's code uses unscaled dot products in num / den: at scale 1 both compute the same ||phi||^2, ||h||^2
    paper_phi, paper_h = paper_terms(q, k, v, 1.0)
    at_one = reconstruction_terms(q, k, v, 1.0)
    assert torch.allclose(at_one["recon_phi_norm"], paper_phi.mean(-1), rtol=TOL, atol=0)
    assert torch.allclose(at_one["recon_h_norm"], paper_h.mean(-1), rtol=TOL, atol=0)


def test_eigen_statistics_equal_the_study_code_on_random_tensors():
    layers = [_random_qkv(s, B=3, H=2, N=20, d=6)[1] for s in (7, 8)]
    scale = 6 ** -0.5
    per_layer = [eigen_statistics(k, scale) for k in layers]
    for name, (std, eps, by_abs) in VARIANTS.items():
        for stat in EIG_STATS:
            col = f"eig_{name}_{stat}"
            ours = float(torch.stack([p[col] for p in per_layer]).mean())  # over layers, heads, images
            ref = np.mean([study_eigen_stats(layers, b, std, eps, by_abs)[stat] for b in range(3)])
            assert close(ours, ref), (col, ours, ref)


# ---- a timm ViT with random weights, through its own forward -----------------------------------------------

def _timm_vit():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                              embed_dim=48, num_heads=3, depth=2, num_classes=10)
    return model.eval()


def _captured_qkv(model, x):
    """q, k, v per layer as the study captures them: a forward hook on attn.qkv, reshaped."""
    store = []
    hooks = [b.attn.qkv.register_forward_hook(lambda m, i, o: store.append(o.detach())) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    out = []
    for qkv, blk in zip(store, model.blocks):
        B, N = qkv.shape[:2]
        H = blk.attn.num_heads
        out.append(qkv.double().reshape(B, N, 3, H, -1).permute(2, 0, 3, 1, 4).unbind(0))
    return out


def test_timm_vit_random_weights_equal_the_study_code():
    model = _timm_vit()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rows, _ = run_diagnostics(model, x, ["kpca_alignment", "kpca_reconstruction_terms", "kpca_eigenvalues"])
    df = pd.DataFrame(rows).set_index(["layer", "head"])
    captured = _captured_qkv(model, x)
    B = x.shape[0]
    for layer, (q, k, v) in enumerate(captured):
        d = k.shape[-1]
        terms = study_terms(q, k, v, d ** -0.5)
        for h in range(k.shape[1]):
            per_image = [study_value_vectors(k[b, h], v[b, h], d) for b in range(B)]
            for m in ALIGNMENT_METRICS:
                ref = np.mean([p[m] for p in per_image])
                assert close(df.loc[(layer, h), m], ref), (layer, h, m, df.loc[(layer, h), m], ref)
                sq = np.mean([p[m] ** 2 for p in per_image])
                assert close(df.loc[(layer, h), m + "_sq"], sq)
            for m in TERM_METRICS:
                assert close(df.loc[(layer, h), m], float(terms[m][:, h].mean()), 1e-6), (layer, h, m)
    keys = [k for _, k, _ in captured]
    for name, (std, eps, by_abs) in VARIANTS.items():
        for stat in EIG_STATS:
            ref = np.mean([study_eigen_stats(keys, b, std, eps, by_abs)[stat] for b in range(B)])
            assert close(df[f"eig_{name}_{stat}"].mean(), ref), (name, stat)


def test_registered_with_their_sources():
    import importlib

    assert {"kpca_alignment", "kpca_reconstruction_terms", "kpca_eigenvalues"} <= set(list_diagnostics())
    for mod, script in (("kpca_alignment", "value_vectors.py"), ("kpca_terms", "reconstruction_relative.py"),
                        ("kpca_eigen", "eigenvalues.py")):
        doc = importlib.import_module(f"robustbench_rpc.diagnostics.{mod}").__doc__
        assert "2505.07908" in doc and script in doc


# ---- intervals, the suite and its report -------------------------------------------------------------------

def test_pooled_intervals_equal_the_spread_over_images_and_heads():
    from robustbench_rpc.diagnostics.moments import pooled

    _, k, v = _random_qkv(11, B=5, H=3)
    per = alignment_metrics(v, kpca_value_matrix(k, k.shape[-1] ** -0.5))["align_kernel_cka"]  # (B, H)
    means, squares = per.mean(0).tolist(), per.pow(2).mean(0).tolist()  # what the rows store, per head
    got = pooled(means, squares, n_images=5)
    flat = per.flatten().numpy()
    assert got["mean"] == pytest.approx(flat.mean(), abs=1e-12)
    assert got["sd"] == pytest.approx(flat.std(ddof=1), abs=1e-9)
    assert got["hi"] - got["mean"] == pytest.approx(1.96 * flat.std(ddof=1) / math.sqrt(15), abs=1e-9)


def test_kpca_claims_suite_through_the_cli(tmp_path):
    from robustbench_rpc.cli.commands import main
    from robustbench_rpc.diagnostics.moments import pooled

    out = tmp_path / "claims"
    rc = main(["run", "--suite", "kpca-claims", "--model", "symvit_micro_patch4_32:packaged", "--limit", "6",
               "--batch-size", "3", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert rc == 0
    claims = pd.read_csv(out / "tables" / "kpca_claims.csv")
    assert set(claims["claim"].str[:10]) == {"values are", "attention ", "Gram eigen"}
    assert {"paper", "study"} == set(claims["side"])
    assert claims["reading"].str.contains("supports").all()
    full = pd.read_csv(out / "tables" / "diagnostics_full.csv")
    assert set(full["layer"]) == {0, 1, 2, 3} and full["n"].eq(6).all()
    row = claims[claims["quantity"] == "linear CKA"].iloc[0]
    ref = pooled(full["align_linear_cka"], full["align_linear_cka_sq"], 6)
    assert row["mean"] == pytest.approx(ref["mean"]) and row["lo"] == pytest.approx(ref["lo"])
    assert 0 <= row["mean"] <= 1 and row["lo"] < row["mean"] < row["hi"]
    report = (out / "report.md").read_text()
    assert "Kernel-PCA claims" in report and "mean ± sd [95% CI]" in report
    assert (out / "plots" / "kpca_claims_symvit_micro_patch4_32.png").is_file()


# ---- per-epoch diagnostics in training ---------------------------------------------------------------------

def test_training_records_diagnostics_per_epoch_equal_to_diagnose_on_the_checkpoint(tmp_path):
    from robustbench_rpc.cli.commands import main
    from robustbench_rpc.training import Settings, build_recipe, train

    tiny = {"embed_dim": 16, "depth": 2, "num_heads": 2}
    names = ["kpca_reconstruction_terms", "projection_loss"]
    recipe = build_recipe(None, {"model.name": "symvit_micro_patch4_32", "model.kwargs": tiny, "data.limit": 96,
                                 "optim.epochs": 2, "optim.warmup_epochs": 1, "validation.limit": 16,
                                 "validation.steps": 0, "validation.diagnostics": names,
                                 "validation.diagnostics_limit": 10})
    res = train(recipe, tmp_path / "t", Settings(progress=False), log=lambda _: None)
    csv_rows = pd.read_csv(tmp_path / "t" / "metrics.csv")
    assert len(csv_rows) == 2
    for col in ("diag_recon_phi_norm", "diag_recon_h_norm", "diag_recon_rel_error_wrt_h", "diag_proj_error"):
        assert col in csv_rows and csv_rows[col].notna().all()
    assert "diag_proj_loss" in csv_rows  # NaN while the paper's error is negative (log undefined)
    assert csv_rows["diag_recon_h_norm"].iloc[0] != csv_rows["diag_recon_h_norm"].iloc[1]  # one value per epoch
    from robustbench_rpc.reports.kpca_claims import training_figure

    assert training_figure(tmp_path / "t" / "metrics.csv", tmp_path / "fig1.png").stat().st_size > 10_000
    out = tmp_path / "diag"
    rc = main(["diagnose", "--model", f"symvit_micro_patch4_32:{res['last_checkpoint']}", "--limit", "10",
               *[a for n in names for a in ("--diagnostic", n)], "--out", str(out)])
    assert rc == 0
    diag = pd.read_csv(out / "diagnostics.csv")
    assert diag["n"].eq(10).all()
    last = csv_rows.iloc[-1]
    for col in ("recon_phi_norm", "recon_h_norm", "recon_abs_error", "recon_rel_error_wrt_h",
                "recon_rel_error_wrt_phi", "proj_loss", "proj_error"):
        assert last[f"diag_{col}"] == pytest.approx(diag[col].mean(), rel=1e-9, nan_ok=True), col


def test_recipe_refuses_an_unknown_per_epoch_diagnostic_and_keeps_old_recipes_unchanged():
    from robustbench_rpc.training import build_recipe
    from robustbench_rpc.training.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"validation.diagnostics must list registered diagnostics.*kpca_alignment"):
        build_recipe(None, {"model.name": "symvit_micro_patch4_32", "validation.diagnostics": ["kpca_alignmnt"]})
    plain = build_recipe("symvit_micro_patch4_32")
    assert "diagnostics" not in plain.to_dict()["validation"]  # recipes without the key keep their hash


def test_diagnose_writes_the_claims_table_and_plot(tmp_path):
    from robustbench_rpc.cli.commands import main

    out = tmp_path / "d"
    rc = main(["diagnose", "--model", "vit_micro_patch4_32:packaged", "--limit", "4", "--diagnostic", "kpca_alignment",
               "--diagnostic", "kpca_reconstruction_terms", "--diagnostic", "kpca_eigenvalues", "--out", str(out)])
    assert rc == 0
    claims = pd.read_csv(out / "kpca_claims.csv")
    assert set(claims["side"]) == {"study"} and claims["n"].eq(4 * 4 * 4).all()  # images x layers x heads
    assert (out / "plots" / "kpca_claims_vit_micro_patch4_32.png").is_file()
    assert main(["diagnose", "--model", "vit_micro_patch4_32:packaged", "--limit", "4", "--diagnostic", "eq11",
                 "--out", str(tmp_path / "e")]) == 0
    assert not (tmp_path / "e" / "kpca_claims.csv").exists()  # the paper's side alone: no claims table


def test_a_run_without_the_studys_diagnostics_has_no_claims_section(tmp_path):
    from robustbench_rpc.reports.kpca_claims import claims_plots, claims_table

    pap_only = pd.DataFrame([{"model": "m", "model_key": "m", "input": "clean", "layer": 0, "head": 0,
                              "iteration": 1, "s_fraction": 0.1, "n": 4}])
    assert claims_table(pap_only) is None and claims_plots(pap_only, tmp_path) == []
