"""ImageNet-O as released and the paper's OOD protocol (RPC-Attention code, Robust/eval_OOD.py).

Trees are built on disk in the released layouts with a few tiny images.  Missing classes: the loaders
require every class folder by default (the release has them all), so trees used by the harness create
all 200 (or 1000) folders as empty directories and put images in a handful; the dataset classes are
also checked with ``allow_missing_classes=True`` on trees holding only a few folders.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from robustbench_rpc.cli.commands import main
from robustbench_rpc.data import folders as F
from robustbench_rpc.data.imagenet_classes import (
    IMAGENET_A_WNIDS, IMAGENET_O_INDICES, IMAGENET_O_WNIDS, IMAGENET_R_WNIDS, IMAGENET_WNIDS,
)
from robustbench_rpc.data.resolve import get_dataset
from robustbench_rpc.evalspec import SuiteError
from robustbench_rpc.evaluation.suite import expand, suite_from_dict

O_NOT_A = [w for w in IMAGENET_O_WNIDS if w not in IMAGENET_A_WNIDS]
NOT_O = [w for w in IMAGENET_WNIDS if w not in set(IMAGENET_O_WNIDS)]


def _jpg(path: Path, seed: int, size=(72, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def _fill(root: Path, with_images: dict[str, int], seed: int, name) -> None:
    """``with_images[wnid]`` JPEGs in ``root/<wnid>/``, named ``name(wnid, j, seed + k)``, the k-th drawn
    with seed + k."""
    k = 0
    for w, n in with_images.items():
        for j in range(n):
            _jpg(root / w / name(w, j, seed + k), seed + k)
            k += 1


def released_imagenet_o(root: Path, with_images: dict[str, int], all_folders: bool = True, seed: int = 100) -> Path:
    """``root/<wnid>/*.jpg`` (+ the release's README.txt at the root)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.txt").write_text("ImageNet-O\n")
    for w in IMAGENET_O_WNIDS if all_folders else with_images:
        (root / w).mkdir(exist_ok=True)
    _fill(root, with_images, seed, lambda w, j, k: f"{w}_{j:03d}.jpg")
    return root


def val_tree(root: Path, with_images: dict[str, int], seed: int = 500) -> Path:
    """ImageNet val ``root/<wnid>/*.JPEG``: all 1000 folders, images in a few."""
    for w in IMAGENET_WNIDS:
        (root / w).mkdir(parents=True, exist_ok=True)
    _fill(root, with_images, seed, lambda w, j, k: f"ILSVRC2012_val_{k:08d}.JPEG")
    return root


# ----------------------------------------------------------------------------------------- class table
def test_imagenet_o_class_table_is_the_papers_mask():
    assert len(IMAGENET_O_WNIDS) == 200 and len(set(IMAGENET_O_WNIDS)) == 200
    assert list(IMAGENET_O_WNIDS) == sorted(IMAGENET_O_WNIDS)
    assert set(IMAGENET_O_WNIDS) <= set(IMAGENET_WNIDS)
    assert [IMAGENET_WNIDS[i] for i in IMAGENET_O_INDICES] == list(IMAGENET_O_WNIDS)
    # first and last entries of eval_OOD.py's imagenet_o_wnids, and the boolean mask it builds
    assert IMAGENET_O_WNIDS[:3] == ("n01443537", "n01704323", "n01770081")
    assert IMAGENET_O_WNIDS[-1] == "n13052670"
    assert IMAGENET_O_INDICES[:5] == (1, 51, 70, 79, 89)
    mask = [w in set(IMAGENET_O_WNIDS) for w in IMAGENET_WNIDS]
    assert torch.equal(torch.nonzero(torch.tensor(mask)).flatten(), F.class_mask_for("imagenet-o"))
    assert torch.equal(F.class_mask_for("imagenet-o-in"), torch.tensor(IMAGENET_O_INDICES))


# ----------------------------------------------------------------------------------------- loaders
def test_released_layout_loads(tmp_path):
    picked = {IMAGENET_O_WNIDS[0]: 2, IMAGENET_O_WNIDS[7]: 1, IMAGENET_O_WNIDS[199]: 2}
    root = released_imagenet_o(tmp_path / "imagenet-o", picked)
    o = F.ImageNetO(root, resize=None, crop=None)
    assert len(o) == 5 and set(o.targets) == {-1}
    assert [o[i][2] for i in range(5)] == list(range(5))
    assert o[0][0].shape == (3, 64, 72)
    assert torch.equal(F.class_mask_for(o), torch.tensor(IMAGENET_O_INDICES))
    # a copy with only some of the 200 folders: refused unless asked for
    part = released_imagenet_o(tmp_path / "part", picked, all_folders=False)
    with pytest.raises(F.ClassMismatchError, match=r"missing classes \(197\)"):
        F.ImageNetO(part)
    assert len(F.ImageNetO(part, allow_missing_classes=True)) == 5


def test_folder_outside_the_200_is_refused_naming_it(tmp_path):
    root = released_imagenet_o(tmp_path / "o", {IMAGENET_O_WNIDS[3]: 1})
    not_o = next(w for w in IMAGENET_A_WNIDS if w not in IMAGENET_O_WNIDS)  # an ImageNet-1k class, not ImageNet-O
    (root / not_o).mkdir()
    (root / "my_ood_images").mkdir()
    for kwargs in ({}, {"allow_missing_classes": True}):
        with pytest.raises(F.ClassMismatchError) as e:
            F.ImageNetO(root, **kwargs)
        msg = str(e.value)
        assert not_o in msg and "my_ood_images" in msg and str(root) in msg and "ood-folder" in msg
    # the old behaviour (any folder names) lives under its own name
    own = F.OODImageFolder(released_imagenet_o(tmp_path / "own", {"my_ood_images": 2}, all_folders=False),
                           resize=None, crop=None)
    assert len(own) == 2 and set(own.targets) == {-1}


def test_in_distribution_set_is_val_of_the_200_classes(tmp_path):
    o_cls, other = IMAGENET_O_WNIDS[5], NOT_O[10]
    root = val_tree(tmp_path / "val", {IMAGENET_WNIDS[0]: 1, o_cls: 2, other: 1, IMAGENET_O_WNIDS[150]: 1})
    full = F.ImageNetVal(root, resize=None, crop=None)
    ind = get_dataset("imagenet-o-in", {"imagenet": str(root)}, {})
    assert len(full) == 5 and len(ind) == 3
    assert {IMAGENET_WNIDS[y] for y in ind.targets} == {o_cls, IMAGENET_O_WNIDS[150]}
    full_ids = {s[0]: s[2] for s in full.samples}
    assert all(full_ids[p] == sid for p, _, sid in ind.samples)  # same ids as the clean evaluation
    assert torch.equal(F.class_mask_for(ind), torch.tensor(IMAGENET_O_INDICES))


def test_released_a_r_layouts_with_readme(tmp_path):
    for cls, wnids in ((F.ImageNetA, IMAGENET_A_WNIDS), (F.ImageNetR, IMAGENET_R_WNIDS)):
        root = tmp_path / cls.name
        for w in wnids:
            (root / w).mkdir(parents=True)
        (root / "README.txt").write_text("release notes")
        _jpg(root / wnids[4] / "x.jpg", 1)
        ds = cls(root)
        assert len(ds) == 1 and ds.targets == [IMAGENET_WNIDS.index(wnids[4])]
        assert ds[0][0].shape == (3, 224, 224)


# ----------------------------------------------------------------------------------------- planning
def _suite(evals: str, dataset: str = "imagenet") -> dict:
    import tomllib

    return tomllib.loads(f'name = "t"\n[defaults]\ndataset = "{dataset}"\n' + evals)


def test_protocols_are_planned_and_validated():
    s = suite_from_dict(_suite('[[evaluation]]\nkind = "ood"\ndataset = "imagenet-o"\n'
                               '[[evaluation]]\nkind = "ood"\ndataset = "imagenet-o"\nprotocol = "all-classes"\n'))
    evs = expand(s, "imagenet")
    assert [(e.kind, e.dataset, e.params.get("protocol")) for e in evs] == [
        ("clean", "imagenet-o-in", None), ("ood", "imagenet-o", "imagenet-o-200"), ("ood", "imagenet-o", "all-classes")]
    assert evs[0].params["class_mask"] == evs[1].params["class_mask"] == "imagenet-o"
    assert "class_mask" not in evs[2].params
    with pytest.raises(SuiteError, match="did you mean imagenet-o-200"):
        expand(suite_from_dict(_suite('[[evaluation]]\nkind = "ood"\ndataset = "imagenet-o"\n'
                                      'protocol = "imagenet-o200"\n')), "imagenet")
    with pytest.raises(SuiteError, match="'imagenet-o' only"):
        expand(suite_from_dict(_suite('[[evaluation]]\nkind = "ood"\ndataset = "digits32-ood"\n'
                                      'protocol = "imagenet-o-200"\n', "digits32")), "digits32")


def test_paper_suite_uses_the_papers_protocol():
    from robustbench_rpc.evaluation.suite import load_suite

    evs = expand(load_suite("paper"), "imagenet")
    ood = [e for e in evs if e.kind == "ood"]
    assert len(ood) == 1 and ood[0].params == {"protocol": "imagenet-o-200", "class_mask": "imagenet-o"}
    assert any(e.kind == "clean" and e.dataset == "imagenet-o-in" for e in evs)


# ----------------------------------------------------------------------------------------- end to end
def _independent_scores(model, paths, mask=None):
    """Max softmax over (optionally) the masked columns, computed here with torchvision alone."""
    from torchvision import transforms as T

    cfg = model.data_config
    size = int(cfg["input_size"][-1])
    tf = T.Compose([T.Resize(int(size / cfg["crop_pct"]), interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(size), T.ToTensor()])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        logits = model(x)
    if mask is not None:
        logits = logits[:, list(mask)]  # the paper's net(data)[:, mask]
    return torch.softmax(logits.double(), dim=1).max(dim=1).values.numpy()


def _ap(conf_in, conf_out):
    y = np.r_[np.ones(len(conf_out)), np.zeros(len(conf_in))]
    score = -np.r_[conf_out, conf_in]
    return average_precision_score(y, score), roc_auc_score(y, score)


def test_paper_protocol_end_to_end_matches_sklearn(tmp_path):
    o_cls = list(IMAGENET_O_WNIDS[:2]) + O_NOT_A[5:7]
    val = val_tree(tmp_path / "val", {**{w: 2 for w in o_cls}, NOT_O[0]: 2, NOT_O[500]: 2})
    o_root = released_imagenet_o(tmp_path / "imagenet-o", {IMAGENET_O_WNIDS[10]: 3, IMAGENET_O_WNIDS[120]: 3})
    suite = tmp_path / "o.toml"
    suite.write_text('name = "o"\n[defaults]\ndataset = "imagenet"\nbatch_size = 4\nseed = 5\n'
                     '[[evaluation]]\nkind = "clean"\n'
                     '[[evaluation]]\nkind = "ood"\ndataset = "imagenet-o"\nprotocol = "imagenet-o-200"\n'
                     '[[evaluation]]\nkind = "ood"\ndataset = "imagenet-o"\nprotocol = "all-classes"\n')
    out = tmp_path / "out"
    model_args = ["--model", "symvit_tiny_patch16_224", "--model-arg", "img_size=64", "--model-arg", "depth=1"]
    assert main(["run", "--suite", str(suite), *model_args, "--out", str(out), "--no-progress", "--device", "cpu",
                 "--data-root", f"imagenet={val}", "--data-root", f"imagenet-o={o_root}"]) == 0

    # the model the harness evaluated: un-checkpointed weights are a function of the run seed
    from robustbench_rpc.models import load_model

    torch.manual_seed(5)
    model = load_model("symvit_tiny_patch16_224", None, device="cpu", img_size=64, depth=1).eval()
    val_o = sorted(str(p) for w in sorted(o_cls) for p in (val / w).glob("*.JPEG"))
    val_all = sorted(str(p) for p in val.glob("*/*.JPEG"))
    ood = sorted(str(p) for p in o_root.glob("*/*.jpg"))
    assert len(val_o) == 8 and len(val_all) == 12 and len(ood) == 6
    ap200, auroc200 = _ap(_independent_scores(model, val_o, IMAGENET_O_INDICES),
                          _independent_scores(model, ood, IMAGENET_O_INDICES))
    ap1k, _ = _ap(_independent_scores(model, val_all), _independent_scores(model, ood))
    assert not math.isclose(ap200, ap1k, abs_tol=1e-6)  # the two protocols are distinguishable here

    table = pd.read_csv(out / "tables" / "ood.csv")
    by_protocol = table.set_index("protocol")
    assert by_protocol.loc["imagenet-o-200", "aupr_pct"] == pytest.approx(100 * ap200, abs=1e-6)
    assert by_protocol.loc["imagenet-o-200", "auroc_pct"] == pytest.approx(100 * auroc200, abs=1e-6)
    assert (by_protocol.loc["imagenet-o-200", "n_in"], by_protocol.loc["imagenet-o-200", "n_out"]) == (8, 6)
    assert by_protocol.loc["all-classes", "aupr_pct"] == pytest.approx(100 * ap1k, abs=1e-6)
    assert by_protocol.loc["all-classes", "n_in"] == 12

    evals = pd.read_csv(out / "results" / "evaluations.csv")
    ind = evals[evals["dataset"] == "imagenet-o-in"]
    assert len(ind) == 1 and ind["kind"].iloc[0] == "clean" and int(ind["n_samples"].iloc[0]) == 8
    samples = pd.read_csv(out / "results" / "samples.csv")
    masked = samples[samples["eval_key"].isin(ind["eval_key"])]
    assert set(masked["pred"]) <= set(IMAGENET_O_INDICES)  # argmax over the 200 classes only
    md = (out / "tables" / "ood.md").read_text()
    assert "Protocol imagenet-o-200" in md and "Robust/eval_OOD.py" in md and "Protocol all-classes" in md
    params = [json.loads(p) for p in evals[evals["kind"] == "ood"]["params"]]
    assert {p["in_eval_key"] for p in params if p["protocol"] == "imagenet-o-200"} == set(ind["eval_key"])


def test_ood_result_refuses_mismatched_masks(tmp_path):
    from robustbench_rpc.reports.compute import ood_result
    from robustbench_rpc.reports.data import RunData
    from robustbench_rpc.store.results import ResultsStore

    store = ResultsStore(tmp_path / "results.sqlite")
    store.register_model("m", {"name": "m"})
    clean = {"kind": "clean", "name": "clean", "dataset": "imagenet", "params": {}, "n_samples": 2}
    store.register_evaluation("c", clean)
    store.register_evaluation("o", {"kind": "ood", "name": "imagenet-o", "dataset": "imagenet-o", "n_samples": 2,
                                    "params": {"protocol": "imagenet-o-200", "class_mask": "imagenet-o",
                                               "in_eval_key": "c"}})
    for key, label in (("c", 3), ("o", -1)):
        store.write_unit("m", key, 0, {"sample_id": [0, 1], "label": [label] * 2, "pred": [1, 1],
                                       "correct1": [0, 1], "correct5": [1, 1], "confidence": [0.5, 0.9]})
    res, why = ood_result(RunData.load(tmp_path), "m", "o")
    assert res is None and "different class masks" in why
