"""The RPC paper's threat model: attacks in normalized units, no clipping, predicted labels, plain
accuracy; the `paper` preset's parameters; the store keeps both accuracy definitions.

The references below are written in this file from cleverhans v4's PyTorch attacks, which the paper's
``Attack/engine.py`` calls on normalized images: ``fast_gradient_method``, ``projected_gradient_descent``,
``sparse_l1_descent`` and ``carlini_wagner_l2``. They use no project code.
"""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
import torch.nn as nn

from robustbench_rpc.attacks import attack_outcomes, get_attack, get_preset
from robustbench_rpc.attacks.base import NormalizationError
from robustbench_rpc.models.normalize import Normalized
from robustbench_rpc.store.results import ResultsStore
from robustbench_rpc.evalspec import SuiteError
from robustbench_rpc.evaluation.suite import expand, load_suite, suite_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HW = 8


def net(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * HW * HW, 32), nn.Tanh(), nn.Linear(32, classes))


def batch(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, HW, HW, generator=g), torch.randint(0, 10, (n,), generator=g)


def to_norm(x):
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# -- independent references (cleverhans semantics, normalized input, clip None, y None) ----------------
def ref_fgm(model_fn, x, eps, y):
    x = x.clone().detach().requires_grad_(True)
    loss = nn.CrossEntropyLoss()(model_fn(x), y)
    loss.backward()
    return x + eps * torch.sign(x.grad)


def ref_pgd(model_fn, x, eps, eps_iter, nb_iter):
    y = torch.max(model_fn(x), 1)[1]
    adv = x.clone()
    for _ in range(nb_iter):
        adv = ref_fgm(model_fn, adv, eps_iter, y).detach()
        adv = x + torch.clamp(adv - x, -eps, eps)
    return adv


def ref_sld(model_fn, x, eps=10.0, eps_iter=1.0, nb_iter=20, sparsity=99):
    y = torch.argmax(model_fn(x), 1)
    adv = x.clone()
    for _ in range(nb_iter):
        adv = adv.clone().detach().requires_grad_(True)
        loss = nn.CrossEntropyLoss(reduction="none")(model_fn(adv), y)
        (grad,) = torch.autograd.grad(loss.mean(), [adv])
        g = grad.view(grad.shape[0], -1)
        k = int(sparsity / 100.0 * g.shape[1])
        thresh, _ = torch.kthvalue(g.abs(), k, keepdim=True)
        tied = (g.abs() >= thresh).float()
        step = (torch.sign(g) * tied / tied.sum(dim=1, keepdim=True)).view(grad.shape)
        adv = adv + step * eps_iter
        adv = x + (adv - x).renorm(p=1, dim=0, maxnorm=eps)
    return adv.detach()


def ref_cw(model_fn, x, n_classes, confidence, lr=5e-3, initial_const=1e-2, bss=2, iters=15):
    """cleverhans carlini_wagner_l2 with its (B, 1) const broadcast and per-sample Python bookkeeping."""
    y = torch.argmax(model_fn(x), 1)
    n = len(x)
    lower, upper = [0.0] * n, [1e10] * n
    const = x.new_ones(n, 1) * initial_const
    o_bestl2, o_bestattack = [float("inf")] * n, None
    x = torch.clamp(x, 0, 1)
    ox = x.clone().detach()
    o_bestattack = x.clone().detach()
    t = torch.arctanh((torch.clamp(x, 0, 1) * 2 - 1) * 0.999999)
    modifier = torch.zeros_like(t, requires_grad=True)
    onehot = nn.functional.one_hot(y, n_classes).float()
    opt = torch.optim.Adam([modifier], lr=lr)
    for _ in range(bss):
        bestl2, bestscore = [float("inf")] * n, [-1] * n
        for _ in range(iters):
            new_x = (torch.tanh(modifier + t) + 1) / 2
            logits = model_fn(new_x)
            real = torch.sum(onehot * logits, 1)
            other, _ = torch.max((1 - onehot) * logits - onehot * 1e4, 1)
            f = torch.max(real - other + confidence, torch.tensor(0.0))
            l2 = torch.pow(new_x - ox, 2).sum(list(range(1, x.dim())))
            opt.zero_grad()
            (const * f + l2).sum().backward()
            opt.step()
            for i in range(n):
                lg = logits[i].clone().detach()
                lg[y[i]] += confidence
                ok = torch.argmax(lg) != y[i]
                if l2[i] < o_bestl2[i] and ok:
                    o_bestl2[i] = l2[i]
                    o_bestattack[i] = new_x[i].detach()
                    bestl2[i], bestscore[i] = l2[i], int(torch.argmax(logits[i]))
                elif l2[i] < bestl2[i] and ok:
                    bestl2[i], bestscore[i] = l2[i], int(torch.argmax(logits[i]))
        for i in range(n):
            if bestscore[i] != y[i] and bestscore[i] != -1:
                upper[i] = min(upper[i], float(const[i]))
                if upper[i] < 1e9:
                    const[i] = (lower[i] + upper[i]) / 2
            else:
                lower[i] = max(lower[i], float(const[i]))
                const[i] = (lower[i] + upper[i]) / 2 if upper[i] < 1e9 else const[i] * 10
    return o_bestattack.detach()


PAPER = dict(space="normalized", clip=False, labels="predicted")


@pytest.mark.parametrize("eps_i", [1, 4])
def test_pgd_and_fgsm_match_the_paper_algorithm(eps_i):
    inner = net()
    model = Normalized(inner, MEAN, STD)
    x, y = batch()
    eps = eps_i / 255
    z = to_norm(x)
    ref_p = ref_pgd(inner, z, eps, 0.15 * eps, 20)
    ref_f = ref_fgm(inner, z, eps, torch.max(inner(z), 1)[1]).detach()
    ours_p = get_attack("pgd", eps=eps, steps=20, alpha=0.15 * eps, random_start=False, **PAPER)(model, x, y)
    ours_f = get_attack("fgsm", eps=eps, **PAPER)(model, x, y)
    for ours, ref in ((ours_p, ref_p), (ours_f, ref_f)):
        assert torch.allclose(to_norm(ours), ref, atol=2e-5)
        assert torch.equal(model(ours).argmax(1), inner(ref).argmax(1))
        # the budget is eps in normalized units = eps * std_c per channel in pixels, not pixel eps
        per_channel = (ours - x).abs().amax(dim=(0, 2, 3))
        assert torch.all(per_channel <= eps * torch.tensor(STD) + 1e-6)
        assert torch.all(per_channel > 0.9 * eps * torch.tensor(STD))


def test_no_clip_leaves_the_image_range_and_clip_keeps_it():
    model = Normalized(net(), MEAN, STD)
    x, y = batch()
    x[:, :, 0, 0] = 1.0  # saturated pixels: an unclipped step leaves [0, 1]
    x[:, :, 0, 1] = 0.0
    free = get_attack("fgsm", eps=8 / 255, **PAPER)(model, x, y)
    assert free.max() > 1.0 or free.min() < 0.0
    kept = get_attack("fgsm", eps=8 / 255, space="normalized", clip=True)(model, x, y)
    assert kept.min() >= 0.0 and kept.max() <= 1.0


def test_predicted_labels_attack_the_clean_prediction():
    inner = net()
    model = Normalized(inner, MEAN, STD)
    x, _ = batch()
    pred = model(x).argmax(1)
    wrong = (pred + 1) % 10  # true labels that the model gets wrong everywhere
    a = get_attack("fgsm", eps=2 / 255, **PAPER)(model, x, wrong)
    b = get_attack("fgsm", eps=2 / 255, space="normalized", clip=False, labels="true")(model, x, pred)
    assert torch.equal(a, b)  # 'predicted' ignores the given labels and uses the prediction


def test_sld_matches_the_paper_algorithm():
    inner = net(3)
    model = Normalized(inner, MEAN, STD)
    x, y = batch(6)
    (spec,) = [s for s in get_preset("paper") if s["name"] == "sld"]
    params = {k: v for k, v in spec.items() if k not in ("name", "accuracy", "attack_amp")}
    ours = get_attack("sld", **params)(model, x, y)
    ref = ref_sld(inner, to_norm(x))
    assert torch.allclose(to_norm(ours), ref, atol=1e-4)
    assert torch.all((to_norm(ours) - to_norm(x)).abs().flatten(1).sum(1) <= 10.0 + 1e-3)


def test_cw_cleverhans_matches_the_reference():
    inner = net(5)
    model = Normalized(inner, MEAN, STD)
    x, y = batch(5)
    # lr and steps chosen so some samples succeed in the first search step and others do not: their
    # constants then differ, which is where cleverhans' (B, 1) broadcast of the constant shows
    ours = get_attack("cw-cleverhans", confidence=2 / 255, max_iterations=15, binary_search_steps=3, lr=0.05,
                      initial_const=1.0, **PAPER)(model, x, y)
    ref = ref_cw(inner, to_norm(x), 10, 2 / 255, lr=0.05, initial_const=1.0, bss=3)
    assert torch.allclose(to_norm(ours), ref, atol=1e-4)
    # like cleverhans, a sample never fooled comes back as the input clamped to [0, 1] in normalized units
    assert torch.all(to_norm(ours) >= -1e-5) and torch.all(to_norm(ours) <= 1 + 1e-5)


def test_normalized_space_needs_the_wrapper():
    x, y = batch()
    with pytest.raises(NormalizationError, match="Normalized"):
        get_attack("fgsm", eps=1 / 255, space="normalized")(net(), x, y)
    with pytest.raises(ValueError, match="space"):
        get_attack("fgsm", eps=1 / 255, space="norm")
    with pytest.raises(ValueError, match="labels"):
        get_attack("pgd", eps=1 / 255, labels="pred")
    with pytest.raises(ValueError, match="space='pixel'"):
        get_attack("autoattack", eps=1 / 255, space="normalized")


def test_outcomes_keep_both_accuracies_and_normalized_norms():
    model = Normalized(net(), MEAN, STD)
    x, y = batch(16)
    atk = get_attack("pgd", eps=3 / 255, steps=3, alpha=1 / 255, **PAPER)
    out = attack_outcomes(model, atk, x, y)
    assert torch.equal(out.adv_correct1, out.clean_correct1 & out.plain_correct1)
    assert torch.all(out.linf <= 3 / 255 + 1e-5)  # stored norms are in normalized units
    assert torch.any(out.linf > 3 / 255 * max(STD))  # ... which pixel units could not hold
    with torch.no_grad():
        assert torch.equal(out.plain_correct1, model(atk(model, x, y)).argmax(1) == y)


def test_paper_preset_is_the_papers_protocol():
    rows = get_preset("paper")
    by = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)
        assert (r["space"], r["clip"], r["labels"], r["accuracy"], r["attack_amp"]) == \
            ("normalized", False, "predicted", "plain", False)
    assert set(by) == {"fgsm", "pgd", "spsa", "sld", "cw-cleverhans", "noise"}
    grid = [i / 255 for i in range(1, 7)]
    assert [r["eps"] for r in by["fgsm"]] == grid == [r["eps"] for r in by["pgd"]] == [r["eps"] for r in by["spsa"]]
    assert all(r["steps"] == 20 and r["random_start"] and abs(r["alpha"] - 0.15 * r["eps"]) < 1e-15
               for r in by["pgd"])
    assert all((r["steps"], r["lr"], r["delta"], r["n_samples"], r["early_stop"]) == (10, 0.01, 0.01, 128, False)
               for r in by["spsa"])
    (sld,) = by["sld"]
    assert (sld["eps"], sld["alpha"], sld["steps"], sld["sparsity"], sld["mask_saturated"]) == (10.0, 1.0, 20, 99.0,
                                                                                                   False)
    assert [r["confidence"] for r in by["cw-cleverhans"]] == grid
    assert all((r["max_iterations"], r["lr"], r["binary_search_steps"], r["initial_const"], r["eps"])
               == (1000, 5e-3, 5, 1e-2, None) for r in by["cw-cleverhans"])
    (noise,) = by["noise"]
    assert noise["eps"] == 0.3
    extras = {r["name"] for r in get_preset("paper-extras")}
    assert extras == {"autoattack", "square"}


def test_paper_suite_defaults_and_validation():
    suite = load_suite("paper")
    assert suite.defaults["amp"] == {"cuda": "fp16", "cpu": "fp32"}
    evals = [e for e in expand(suite, "imagenet") if e.kind == "attack"]
    assert all(e.params["space"] == "normalized" for e in evals)
    bad = {"name": "t", "evaluation": [{"kind": "attack", "attack": "pgd", "eps": ["1/255"], "stepz": 3}]}
    with pytest.raises(SuiteError, match="stepz"):
        expand(suite_from_dict(bad), "digits32")
    bad = {"name": "t", "evaluation": [{"kind": "attack", "attack": "pgd", "eps": ["1/255"], "accuracy": "x"}]}
    with pytest.raises(SuiteError, match="accuracy"):
        expand(suite_from_dict(bad), "digits32")


def test_amp_table_per_device():
    from robustbench_rpc.evaluation.plan import amp_for_device

    assert amp_for_device({"cuda": "fp16", "cpu": "fp32"}, "cpu", "s") == "fp32"
    assert amp_for_device({"cuda": "fp16", "cpu": "fp32"}, "cuda:1", "s") == "fp16"
    assert amp_for_device(None, "cpu", "s") == "fp32"
    with pytest.raises(SuiteError, match="mps"):
        amp_for_device({"cuda": "fp16"}, "mps", "s")


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value_json TEXT NOT NULL);
CREATE TABLE models (model_key TEXT PRIMARY KEY, info_json TEXT NOT NULL);
CREATE TABLE evaluations (eval_key TEXT PRIMARY KEY, info_json TEXT NOT NULL);
CREATE TABLE units (model_key TEXT NOT NULL, eval_key TEXT NOT NULL, unit INTEGER NOT NULL, n INTEGER NOT NULL,
    finished_at TEXT NOT NULL, PRIMARY KEY (model_key, eval_key, unit));
CREATE TABLE samples (model_key TEXT NOT NULL, eval_key TEXT NOT NULL, sample_id INTEGER NOT NULL,
    unit INTEGER NOT NULL, label INTEGER NOT NULL, pred INTEGER NOT NULL, correct1 INTEGER NOT NULL,
    correct5 INTEGER NOT NULL, confidence REAL NOT NULL, clean_correct1 INTEGER, linf REAL, l2 REAL,
    PRIMARY KEY (model_key, eval_key, sample_id)) WITHOUT ROWID;
CREATE TABLE checks (model_key TEXT NOT NULL, eval_key TEXT NOT NULL, "check" TEXT NOT NULL, status TEXT NOT NULL,
    message TEXT NOT NULL, details_json TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (model_key, eval_key, "check"));
"""


def test_version_1_store_is_read_and_migrated(tmp_path):
    path = tmp_path / "results.sqlite"
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO models VALUES ('m', ?)", (json.dumps({"name": "m"}),))
    con.execute("INSERT INTO evaluations VALUES ('e', ?)", (json.dumps(
        {"kind": "clean", "name": "clean", "dataset": "d", "params": {}, "n_samples": 1}),))
    con.execute("INSERT INTO units VALUES ('m', 'e', 0, 1, 'now')")
    con.execute("INSERT INTO samples VALUES ('m', 'e', 7, 0, 3, 3, 1, 1, 0.9, NULL, NULL, NULL)")
    con.commit()
    con.close()
    ro = ResultsStore(path, readonly=True)
    s = ro.samples()
    assert s["sample_id"].tolist() == [7] and s["plain_correct1"].isna().all()
    ro.close()
    rw = ResultsStore(path)  # migrated in place, the old row kept
    rw.register_evaluation("e2", {"kind": "attack", "name": "pgd", "dataset": "d", "params": {}, "n_samples": 1})
    rw.write_unit("m", "e2", 0, {"sample_id": [7], "label": [3], "pred": [1], "correct1": [0], "correct5": [1],
                                "confidence": [0.5], "plain_correct1": [0], "plain_correct5": [1],
                                "clean_correct5": [1]})
    s = rw.samples()
    assert s["sample_id"].tolist() == [7, 7]
    assert np.array_equal(s["plain_correct5"].to_numpy(dtype=float, na_value=np.nan), [np.nan, 1.0], equal_nan=True)
    assert rw.get_meta("schema_version") == 4  # migrated through every version to the current one
    rw.close()


def test_early_stop_never_raises_robust_accuracy_and_skips_lost_samples():
    torch.manual_seed(0)
    inner = net(7)
    model = Normalized(inner, MEAN, STD)
    x, y = batch(64, seed=3)
    y = torch.where(torch.arange(64) % 2 == 0, model(x).argmax(1), y)  # half the samples clean-correct
    common = dict(eps=2 / 255, steps=10, alpha=0.5 / 255, random_start=False)
    plain = attack_outcomes(model, get_attack("pgd", **common), x, y)
    early_atk = get_attack("pgd", early_stop=True, **common)
    early = attack_outcomes(model, early_atk, x, y)
    assert early.robust_accuracy <= plain.robust_accuracy
    assert torch.all(early.adv_correct1 <= plain.adv_correct1)  # per sample, never more robust
    lost = ~early.clean_correct1
    assert torch.equal(early_atk(model, x, y)[lost], x[lost])  # clean-misclassified: not attacked at all
    # early-stopped samples keep a misclassified iterate; the plain loop may walk back out of it
    assert 0 < plain.robust_accuracy and early.robust_accuracy < 1


def test_robust_evaluations_stop_early_and_the_paper_protocol_does_not():
    from robustbench_rpc.evalspec import EvalSpec
    from robustbench_rpc.evalspec import attack_params

    robust = EvalSpec("attack", "pgd", "d", {"eps": 1 / 255})
    paper = EvalSpec("attack", "pgd", "d", {"eps": 1 / 255, "accuracy": "plain"})
    assert attack_params(robust, None)["early_stop"] is True
    assert attack_params(paper, None)["early_stop"] is False
    assert "early_stop" not in attack_params(EvalSpec("attack", "fgsm", "d", {"eps": 1 / 255}), None)


def test_paper_threat_model_end_to_end_and_protocol_card(tmp_path):
    """A run in the paper's threat model stores plain accuracy, normalized norms and says so on the card."""
    from robustbench_rpc.cli.commands import main

    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\n[defaults]\ndataset = "digits32"\nmodels = ["symvit_micro_patch4_32:packaged"]\n'
                     'limit = 16\nbatch_size = 8\n[[evaluation]]\nkind = "clean"\n'
                     '[[evaluation]]\nkind = "attack"\nattack = "pgd"\neps = ["4/255"]\nsteps = 5\nalpha_rel = 0.15\n'
                     'space = "normalized"\nclip = false\nlabels = "predicted"\naccuracy = "plain"\n'
                     'attack_amp = false\n')
    out = tmp_path / "o"
    assert main(["run", "--suite", str(suite), "--out", str(out), "--no-progress"]) == 0
    store = ResultsStore(out / "results.sqlite", readonly=True)
    ev = store.evaluations()
    key = ev[ev["kind"] == "attack"]["eval_key"].iloc[0]
    s = store.samples(eval_key=key)
    assert (s["correct1"] == s["plain_correct1"]).all()  # the reported accuracy is the plain one
    assert (s["linf"] <= 4 / 255 + 1e-5).all() and (s["linf"] > 4 / 255 * 0.3240).any()  # normalized units
    store.close()
    card = (out / "tables" / "attacks.md").read_text()
    assert "4/255 (norm.)" in card and "norm Linf" in card and "no clipping" in card
    assert "pixel-equivalent eps for symvit_micro_patch4_32 at 4/255: 1.3/255" in card
