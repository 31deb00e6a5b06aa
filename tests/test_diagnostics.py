"""Diagnostics against independent computations written here from the paper's algorithm and equations."""
import math

import pandas as pd
import pytest
import timm
import torch

import robustbench_rpc  # noqa: F401
from robustbench_rpc.diagnostics import list_diagnostics, run_diagnostics
from robustbench_rpc.diagnostics.kpca import pairwise_absdiff_stats


def _inputs_of_attention(model, x):
    """The input of every block's attention module in a plain forward (captured by a hook)."""
    seen = {}
    hooks = [b.attn.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach()))
             for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def _reference_pap(k, v, n_iter, lam, C, scale):
    """Per iteration, per (sample, head): the statistics, from the paper's loop written out with Y."""
    B, H, N, d = k.shape
    mu = N * C / (4 * k.abs().sum(dim=(-2, -1), keepdim=True))
    L = torch.zeros_like(k)
    Y = torch.zeros_like(k)
    out = []
    prev = None
    for t in range(1, n_iter + 1):
        R = k - L + Y / mu
        S = torch.sign(R) * torch.clamp(R.abs() - lam * mu, min=0)
        K2 = k - S - Y / mu
        L = torch.softmax(K2 @ K2.transpose(-2, -1) * scale, dim=-1) @ v
        fro = lambda t_: t_.pow(2).sum(dim=(-2, -1)).sqrt()  # noqa: E731
        stats = {
            "s_fraction": (S != 0).float().mean(dim=(-2, -1)),
            "s_to_k_l1": S.abs().sum(dim=(-2, -1)) / k.abs().sum(dim=(-2, -1)),
            "residual": fro(k - L - S) / fro(k),
            "mu": mu.reshape(B, H),
            "threshold": (lam * mu).reshape(B, H),
            "l_change": torch.full((B, H), math.nan) if prev is None else fro(L - prev) / fro(prev),
        }
        out.append({m: s.mean(0) for m, s in stats.items()})  # mean over images, per head
        prev = L
        Y = Y + mu * (k - L - S)
    return out


@pytest.mark.parametrize("lam,n_iter", [(0.5, 3), (2.0, 4), (4.0, 2)])
def test_pap_diagnostics_match_independent_loop(tiny_kwargs, lam, n_iter):
    torch.manual_seed(0)
    model = timm.create_model("rpc_symvit_micro_patch4_32", rpc_layers="all", rpc_iters=n_iter, rpc_lambda=lam,
                              **tiny_kwargs).eval()
    for b in model.blocks:  # keys large enough that some entries cross the threshold at every lambda
        b.attn.qkv.weight.data.mul_(6.0)
    x = torch.randn(6, 3, 32, 32)
    rows, _ = run_diagnostics(model, x, ["pap"], batch_size=4)  # two batches: averaging across batches
    df = pd.DataFrame(rows)
    inputs = _inputs_of_attention(model, x)
    C = tiny_kwargs["embed_dim"]
    nonzero = 0.0
    for layer, b in enumerate(model.blocks):
        k, v = b.attn.keys_values(inputs[layer])
        ref = _reference_pap(k.double(), v.double(), n_iter, lam, C, b.attn.scale)
        for t, stats in enumerate(ref, start=1):
            got = df[(df.layer == layer) & (df.iteration == t)].sort_values("head")
            assert len(got) == tiny_kwargs["num_heads"]
            for metric, want in stats.items():
                g = torch.tensor(got[metric].to_numpy(), dtype=torch.float64)
                torch.testing.assert_close(g, want.double(), atol=1e-4, rtol=1e-4, equal_nan=True,
                                           msg=lambda m, metric=metric, t=t, layer=layer:
                                           f"{metric} layer {layer} iteration {t}: {m}")
            nonzero += float(stats["s_fraction"].sum())
    assert nonzero > 0  # the comparison is not of all-zero S


def _all_rpc(tiny_kwargs, batch: int):
    """The RPC micro model with every layer RPC (seed 0), a random batch and the model's output on it."""
    torch.manual_seed(0)
    model = timm.create_model("rpc_symvit_micro_patch4_32", rpc_layers="all", **tiny_kwargs).eval()
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        return model, x, model(x)


def test_recording_leaves_the_forward_alone(tiny_kwargs):
    model, x, before = _all_rpc(tiny_kwargs, batch=3)
    run_diagnostics(model, x)
    assert all(b.attn.iterate_recorder is None and b.attn.fused_attn for b in model.blocks)
    assert all(not b.attn._forward_pre_hooks for b in model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("arch", ["symvit_micro_patch4_32", "vit_micro_patch4_32"])
def test_kpca_diagnostics_match_direct_formulas(tiny_kwargs, arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, **tiny_kwargs).eval()
    x = torch.randn(4, 3, 32, 32)
    rows, axes = run_diagnostics(model, x, ["projection_loss", "eq11"])
    df, adf = pd.DataFrame(rows), pd.DataFrame(axes)
    assert set(df.iteration) == {0}
    inputs = _inputs_of_attention(model, x)
    for layer, b in enumerate(model.blocks):
        a = b.attn
        xin = inputs[layer]
        B, N, C = xin.shape
        H = a.num_heads
        if arch.startswith("symvit"):
            k, v = a.keys_values(xin)
            q = k
        else:
            q, k, v = a.qkv(xin).reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
        q, k, v = q.double(), k.double(), v.double()
        # Reconstruction/softmax.py, line by line (no log-space)
        qk = q @ k.transpose(-2, -1)
        qq = q @ q.transpose(-2, -1)
        attn = (qk * a.scale).softmax(dim=-1)
        h = attn @ v
        num = torch.exp(torch.diagonal(qq, dim1=-2, dim2=-1))
        den = torch.exp(2 * qk[:, :, :, 0] - torch.log(attn[:, :, :, 0].pow(2)))
        error = num / den - h.pow(2).sum(dim=-1)
        # Eq. 11 with the Gram matrix built explicitly
        kern = torch.exp(k @ k.transpose(-2, -1) * a.scale)
        g = kern.sum(-1)
        kphi = kern / (g.unsqueeze(-1) * g.unsqueeze(-2))
        avec = v * g.unsqueeze(-1)  # a_d[j] = v_j(d) g(k_j)
        gamma = (kphi @ avec) / avec
        i, j = torch.triu_indices(N, N, 1)
        diffs = (gamma[:, :, i, :] - gamma[:, :, j, :]).abs()  # (B, H, pairs, d)
        for head in range(H):
            r = df[(df.layer == layer) & (df["head"] == head)].iloc[0]
            e = error[:, head].mean().item()
            assert r.proj_error == pytest.approx(e, rel=1e-6)
            if e > 0:
                assert r.proj_loss == pytest.approx(math.log(e), rel=1e-6)
            want_mean = diffs[:, head].mean(dim=1).mean(0)  # per axis: mean over pairs, then over images
            want_std = diffs[:, head].std(dim=1, unbiased=False).mean(0)
            got = adf[(adf.layer == layer) & (adf["head"] == head)].sort_values("axis")
            torch.testing.assert_close(torch.tensor(got.eq11_absdiff_mean.to_numpy()), want_mean, rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(torch.tensor(got.eq11_absdiff_std.to_numpy()), want_std, rtol=1e-5, atol=1e-9)
            eig = torch.linalg.eigvalsh(kphi[:, head]).amax(-1).mean()
            assert r.gram_eig_max == pytest.approx(eig.item(), rel=1e-6)


def test_pairwise_stats_small():
    g = torch.tensor([[1.0], [4.0], [2.0]], dtype=torch.float64)  # pairs: 3, 1, 2
    mean, std = pairwise_absdiff_stats(g)
    assert mean.item() == pytest.approx(2.0)
    assert std.item() == pytest.approx(math.sqrt(2 / 3))


def test_registry_names_and_sources():
    import importlib

    assert {"pap", "projection_loss", "eq11"} <= set(list_diagnostics())
    for mod in ("pap", "kpca"):
        doc = importlib.import_module(f"robustbench_rpc.diagnostics.{mod}").__doc__
        assert "Teo & Nguyen" in doc


def test_cli_diagnose_smoke(tmp_path, capsys):
    from robustbench_rpc.cli.commands import main

    out = tmp_path / "diag"
    rc = main(["diagnose", "--model", "rpc_symvit_micro_patch4_32:packaged", "--limit", "8", "--batch-size", "4",
               "--attack", "pgd", "--attack-arg", "eps=4/255", "--attack-arg", "steps=2",
               "--corruption", "gaussian_noise", "--severity", "3", "--out", str(out)])
    assert rc == 0
    df = pd.read_csv(out / "diagnostics.csv")
    for col in ("model", "input", "layer", "head", "iteration", "s_fraction", "s_to_k_l1", "residual", "mu",
                "threshold", "mean_abs_k", "l_change", "proj_loss", "eq11_absdiff_mean"):
        assert col in df.columns
    assert set(df.input) == {"clean", "attack", "corruption"}
    pap = df.dropna(subset=["s_fraction"])
    assert set(pap.layer) == {0} and set(pap.iteration) == {1, 2, 3, 4} and set(pap["head"]) == {0, 1, 2, 3}
    assert len(pap) == 3 * 4 * 4  # inputs x heads x iterations
    assert (out / "diagnostics_axes.csv").is_file()
    assert list((out / "plots").glob("diagnostics_pap_*.png")) and list((out / "plots").glob("*.svg"))
    assert main(["diagnose", "--model", "rpc_symvit_micro_patch4_32:packaged", "--diagnostic", "papp"]) == 2
    assert "Did you mean: pap" in capsys.readouterr().err


def test_keyscale_threshold_is_scale_invariant_and_rpc_unchanged():
    from robustbench_rpc.attention import RPCAttention, RPCKeyScaleAttention

    torch.manual_seed(0)
    k, v = torch.randn(2, 4, 17, 16).abs() ** 1.5 * torch.randn(2, 4, 17, 16).sign(), torch.randn(2, 4, 17, 16)
    k = k / k.abs().mean(dim=(-2, -1), keepdim=True)  # mean |K| = 1 per sample and head
    fractions = {}
    for cls in (RPCAttention, RPCKeyScaleAttention):
        for c in (0.2, 1.0, 5.0):
            a = cls(64, num_heads=4, n_iter=1, lam=4.0, fused_attn=False).eval()
            seen = {}
            a.iterate_recorder = lambda it, **kw: seen.update(kw)
            a.mix(k * c, v)
            fractions[cls.variant_name, c] = float((seen["S"] != 0).float().mean())
    assert fractions["rpc_keyscale", 0.2] == fractions["rpc_keyscale", 1.0] == fractions["rpc_keyscale", 5.0]
    assert fractions["rpc", 0.2] == 0.0 and fractions["rpc", 5.0] > 0.5  # the paper's threshold is not
    assert fractions["rpc", 1.0] == pytest.approx(fractions["rpc_keyscale", 1.0])  # equal at mean|K| ~ 1


def test_diagnose_s_of_the_shipped_rpc_model_is_a_plain_statement_of_paps_iterations(tmp_path):
    """``diagnose``'s fraction of non-zero entries of S per layer, head and iteration, on the shipped RPC model
    and 256 digits, against PAP's iterations written out plainly (with Y, in float64) on the keys of the
    model's own forward: equal to 1e-5 (one entry of S across the threshold is 3.8e-6 here)."""
    from robustbench_rpc.cli.commands import main
    from robustbench_rpc.evaluation.plan import Plan, RunConfig
    from robustbench_rpc.evaluation.suite import suite_from_dict

    spec, out = "rpc_symvit_micro_patch4_32:packaged", tmp_path / "diag"
    assert main(["diagnose", "--model", spec, "--limit", "256", "--batch-size", "128", "--diagnostic", "pap",
                 "--out", str(out), "--no-plots"]) == 0
    got = pd.read_csv(out / "diagnostics.csv").query("input == 'clean'")
    plan = Plan(RunConfig(suite=suite_from_dict({"name": "diagnose", "evaluation": [{"kind": "diagnostics"}]},
                                                "diagnose"), models=[spec], limit=256, out=tmp_path / "plan"),
                log=lambda *_: None)
    ds = plan.base_dataset(plan.dataset)  # the images diagnose read
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    model = robustbench_rpc.load_model("rpc_symvit_micro_patch4_32", checkpoint="packaged").eval()
    net = model.model
    inputs = _inputs_of_attention(net, (x - model.mean) / model.std)
    compared = 0
    for layer, b in enumerate(net.blocks):
        if not getattr(b.attn, "exposes_iterates", False):
            continue
        k, v = b.attn.keys_values(inputs[layer])
        ref = _reference_pap(k.double(), v.double(), b.attn.n_iter, b.attn.lam, b.attn.embed_dim, b.attn.scale)
        for t, stats in enumerate(ref, start=1):
            rows = got[(got.layer == layer) & (got.iteration == t)].sort_values("head")
            diff = (torch.tensor(rows.s_fraction.to_numpy()) - stats["s_fraction"].double()).abs().max()
            assert float(diff) <= 1e-5, (layer, t, float(diff))
            compared += len(rows)
    assert compared == 16 and 0 < got.s_fraction.mean() < 1  # one PAP layer, 4 heads x 4 iterations


def test_iterates_are_recorded_in_the_forward_the_model_runs(tiny_kwargs):
    from robustbench_rpc.diagnostics import record_iterates

    model, x, plain = _all_rpc(tiny_kwargs, batch=2)
    paths = []
    with record_iterates(model, lambda layer, a: lambda it, **kw: paths.append(a.fused_attn)):
        with torch.no_grad():
            recorded = model(x)
    assert paths and all(paths)  # the fused path the model runs, not a stand-in
    assert torch.equal(recorded, plain)
