"""The report's gallery: per model, the first images clean, under each attack at the headline budget (with the
amplified perturbation) and under each corruption severity, from the run's own files; recomputed with the stored
seeds when the run kept none, and then identical to the run's images and stored outcome."""
from __future__ import annotations

import shutil

import pytest
import torch

from robustbench_rpc.reports.data import RunData
from robustbench_rpc.reports.gallery import headline_budget, model_gallery
import tiny_runs
from tiny_runs import suite_text

SUITE = suite_text(dict(kind="clean"), dict(kind="attack", attack="fgsm", eps=["4/255"]),
                   dict(kind="attack", attack="pgd", eps=["8/255"], steps=2, random_start=True),
                   dict(kind="attack", attack="fgsm", eps=["8/255"]),
                   dict(kind="corruption", corruptions=["gaussian_noise", "fog"], severities=[1, 3]),
                   name="tiny-gallery", batch_size=4, seed=3, limit=16)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("gallery")
    out = root / "run"
    assert tiny_runs.run(tiny_runs.suite(root, SUITE, "g.toml"), out) == 0
    return out


def _gallery(out):
    data = RunData.load(out)
    try:
        return model_gallery(data, data.model_keys[0]), headline_budget(data), data.store.samples()
    finally:
        data.close()


def test_the_gallery_shows_each_attack_at_the_headline_budget_and_each_severity(run):
    g, (norm, eps, keys), samples = _gallery(run)
    assert (norm, eps) == ("Linf", pytest.approx(8 / 255)) and len(keys) == 2  # pgd and fgsm at 8/255
    assert [a.label for a in g.attacks] == ["pgd", "fgsm"] and all(a.source == "saved" for a in g.attacks)
    assert len(g.ids) == 3 and g.clean.shape == (3, 3, 32, 32)
    clean = samples[samples.eval_key == samples.eval_key.iloc[0]]
    for a in g.attacks:
        assert a.scale == [pytest.approx(0.5 / (8 / 255))] * 3  # +-eps spans black to white
        assert ((a.adversarial - g.clean).abs().amax() <= 8 / 255 + 1 / 255)  # display copies, 8-bit
    assert sorted({(c, s) for c, s, _, _ in g.corruptions}) == [("fog", 1), ("fog", 3), ("gaussian_noise", 1),
                                                                 ("gaussian_noise", 3)]
    assert all(p is not None for _, _, _, p in g.corruptions) and clean is not None
    html = (run / "index.html").read_text()
    assert "Gallery: symvit_micro_patch4_32" in html
    png = run / "plots" / "gallery_symvit_micro_patch4_32.png"
    assert png.is_file() and png.stat().st_size < 200_000  # small: the page loads fast


def test_a_gallery_recomputed_with_the_stored_seeds_is_the_runs_own(run, tmp_path):
    kept, _, samples = _gallery(run)
    other = tmp_path / "no_gallery"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns(".lock", "gallery"))
    again, _, _ = _gallery(other)
    assert [a.source for a in again.attacks] == ["recomputed", "recomputed"]
    assert all(a.identical for a in again.attacks)  # unit 0's rows as stored
    for a, b in zip(kept.attacks, again.attacks):
        assert a.preds == b.preds
        assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.perturbation, b.perturbation)
    assert torch.allclose(kept.clean, again.clean, atol=0.5 / 255)  # float clean vs its 8-bit display copy
    for (n1, s1, i1, p1), (n2, s2, i2, p2) in zip(kept.corruptions, again.corruptions):
        assert (n1, s1, p1) == (n2, s2, p2) and torch.allclose(i1, i2, atol=0.5 / 255)


def test_a_saved_set_stands_in_for_missing_gallery_files(tmp_path, one_thread):
    out = tmp_path / "saved"
    assert tiny_runs.run(tiny_runs.suite(tmp_path, SUITE, "g.toml"), out, "--no-report", "--save-adversarial") == 0
    with_files, _, _ = _gallery(out)
    shutil.rmtree(out / "gallery")
    from_sets, _, _ = _gallery(out)
    assert [a.source for a in from_sets.attacks] == ["saved", "saved"]
    for a, b in zip(with_files.attacks, from_sets.attacks):
        assert torch.equal(a.adversarial, b.adversarial) and a.preds == b.preds
