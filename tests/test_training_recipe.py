"""Training recipes are validated before any compute; every mistake is one line naming it."""
from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_rpc.cli.commands import main
from robustbench_rpc.models import PACKAGED_DIR, read_checkpoint_metadata
from robustbench_rpc.training import RECIPES_DIR, RecipeError, build_recipe

GOOD = """
name = "t"
version = 2
seed = 3
[model]
name = "symvit_micro_patch4_32"
kwargs = {depth = 1}
[optim]
epochs = 4
lr = 1e-3
[objective]
name = "pgd-at"
eps = "4/255"
steps = 2
step_ramp_epochs = 2
"""


def _file(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_recipes_validate_and_match_the_shipped_checkpoints():
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
    assert {"symvit_micro_patch4_32", "rpc_symvit_micro_patch4_32", "symvit_micro_patch4_32_pgdat",
            "rpc_symvit_micro_patch4_32_pgdat", "rpc_keyscale_symvit_micro_patch4_32_pgdat"} <= set(names)
    from robustbench_rpc.training.seg_train import is_segmentation_recipe

    for name in names:
        if is_segmentation_recipe(name):  # per-pixel recipes: tests/test_segmentation_train.py
            continue
        r = build_recipe(name)
        ckpt = PACKAGED_DIR / f"{name}.safetensors"
        if not ckpt.is_file():
            continue
        meta = read_checkpoint_metadata(ckpt)
        old = meta["recipe"]
        if "optim" in old:  # written by the training room: the very recipe
            assert old == r.to_dict(), name
            continue
        # written by train.py before recipes: its fields are the recipe's
        assert (r.model.name, r.optim.epochs, r.optim.batch_size, r.optim.lr, r.optim.weight_decay,
                r.optim.warmup_epochs, r.optim.label_smoothing, r.data.max_shift, r.seed) == (
            old["model"], old["epochs"], old["batch_size"], old["lr"], old["weight_decay"], old["warmup_epochs"],
            old["label_smoothing"], old["max_shift"], old["seed"]), name
        assert (r.model.init or None) == old.get("init"), name


def test_file_values_defaults_and_overrides(tmp_path):
    r = build_recipe(_file(tmp_path, GOOD), {"optim.lr": 2e-3, "model.kwargs": {"num_heads": 2}},
                     {"optim.lr": "--lr"})
    assert r.name == "t" and r.version == 2 and r.seed == 3 and r.optim.epochs == 4
    assert r.optim.lr == 2e-3  # the flag wins over the file
    assert r.model.kwargs == {"depth": 1, "num_heads": 2}  # tables merge
    assert r.objective.eps == pytest.approx(4 / 255) and r.validation.eps == pytest.approx(4 / 255)
    assert r.validation.step_size == pytest.approx(2.5 * (4 / 255) / 10)  # the project's PGD default
    assert r.validation.select == "pgd" and r.optim.batch_size == 64  # resolved / defaulted
    same = build_recipe(_file(tmp_path, GOOD), {"optim.lr": 2e-3, "model.kwargs": {"num_heads": 2}})
    assert r.sha256() == same.sha256()
    assert r.sha256() != build_recipe(_file(tmp_path, GOOD)).sha256()


@pytest.mark.parametrize("text, expected", [
    ('name = "x"\n[model]\nname = "m"\n[optim]\nepoch = 3\n',
     "unknown key 'optim.epoch' (did you mean optim.epochs"),
    ('[model]\nname = "m"\n[optimizer]\nlr = 1\n', "unknown key 'optimizer'"),
    ('[model]\nname = "m"\n[optim]\nepochs = "ten"\n', "optim.epochs must be an integer, got 'ten'"),
    ('[model]\nname = "m"\n[optim]\nepochs = true\n', "optim.epochs must be an integer, got True"),
    ('[model]\nname = "m"\n[optim]\nepochs = 0\n', "optim.epochs must be >= 1, got 0"),
    ('[model]\nname = "m"\n[optim]\nlr = -1\n', "optim.lr must be > 0, got -1.0"),
    ('[model]\nname = "m"\n[optim]\nbatch_size = 0\n', "optim.batch_size must be >= 1, got 0"),
    ('[model]\nname = "m"\n[optim]\nlabel_smoothing = 1.5\n', "optim.label_smoothing must be in [0, 1)"),
    ('[model]\nname = "m"\n[objective]\nname = "trade"\n', "objective.name must be one of pgd-at, standard, "
                                                          "trades (did you mean trades"),
    ('[model]\nname = "m"\n[objective]\neps = "8/o"\n', "objective.eps must be a number or a fraction"),
    ('[model]\nname = "m"\n[model]\n', "invalid TOML"),
    ('[data]\ndataset = "digits32"\n', "model.name is required"),
    ('model = 3\n', "[model] must be a table"),
    ('[model]\nname = "m"\n[objective]\nstep_ramp_epochs = 3\n', "step_ramp_epochs only applies to pgd-at and trades"),
    ('[model]\nname = "m"\n[validation]\nselect = "pgd"\nsteps = 0\n',
     "validation.select = 'pgd' needs validation.steps"),
])
def test_bad_recipe_files_are_one_line_naming_the_key(tmp_path, text, expected):
    path = _file(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        build_recipe(path)
    msg = str(e.value)
    assert expected in msg and str(path) in msg and "\n" not in msg


@pytest.mark.parametrize("flags, expected", [
    (["--epochs", "0"], "--epochs: optim.epochs must be >= 1, got 0"),
    (["--epochs", "-1"], "--epochs: optim.epochs must be >= 1, got -1"),
    (["--lr", "-1"], "--lr: optim.lr must be > 0, got -1.0"),
    (["--batch-size", "0"], "--batch-size: optim.batch_size must be >= 1, got 0"),
    (["--set", "optim.lrr=1"], "--set optim.lrr: unknown key 'optim.lrr' (did you mean optim.lr"),
    (["--set", "validation.every=two"], "validation.every must be an integer, got 'two'"),
    (["--objective", "pgdat"], "did you mean pgd-at"),
    (["--set", "nope"], "--set expects SECTION.KEY=VALUE"),
    (["--recipe", "symvit_micro_pgdat"], "unknown recipe 'symvit_micro_pgdat'. Did you mean"),
    (["--dataset", "folder"], "dataset 'folder' lives on disk: pass --data-root PATH"),
    (["--data-root", "/"], "data.root is set but digits32 does not read it (embedded data); drop it"),
    (["--model-arg", "num_classes=4"], "predicts 4 classes but digits32 has 10"),
    (["--model-arg", "img_size=64"], "takes 3x64x64 images but digits32 has 3x32x32"),
    (["--init", "nothing.safetensors"], "model.init: no checkpoint file nothing.safetensors"),
    (["--attention", "rpcc"], "Did you mean: rpc"),
    (["--attention", "rpc", "--attention-arg", "lamb=1"], "has no parameter 'lamb'. Did you mean: lam"),
    (["--amp", "bf16", "--device", "cpu"], "--amp bf16 is mixed precision on CUDA"),
])
def test_bad_flags_are_refused_before_the_first_step(tmp_path, capsys, flags, expected):
    out = tmp_path / "out"
    rc = main(["train", "--model", "symvit_micro_patch4_32", *flags, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and expected in err, err
    assert not out.exists()  # nothing written, nothing to clean up


def test_unknown_model_is_one_line(tmp_path, capsys):
    assert main(["train", "--model", "symvit_micro_patch4_23", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "Did you mean: symvit_micro_patch4_32" in err and "\n" not in err


def test_a_folder_of_another_recipe_is_not_resumed(tmp_path, capsys):
    out = tmp_path / "o"
    common = ["train", "--model", "symvit_micro_patch4_32", "--model-arg", "depth=1", "--model-arg", "embed_dim=16",
              "--model-arg", "num_heads=2", "--set", "data.limit=32", "--set", "validation.limit=16",
              "--set", "validation.steps=1", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main(common) == 0
    capsys.readouterr()
    assert main(common) == 0  # finished: the same command again is a no-op
    assert "already trained (1/1 epochs)" in capsys.readouterr().out
    assert main([*common, "--lr", "1e-4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a training of another recipe (optim.lr: 0.003 there, 0.0001 now)" in err and "\n" not in err
