"""Your own model with its evaluation contract, your own image folder, :packaged / :pretrained in the
API, attention swaps that cannot keep weights, and the chance-level trust check."""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import robustbench_rpc
from robustbench_rpc.cli.commands import main
from robustbench_rpc.evaluation.plan import ModelSpec, Plan, RunConfig
from robustbench_rpc.models import (
    PACKAGED_DIR, CheckpointError, ModelContractError, load_model, register_model, resolve_checkpoint,
)
from robustbench_rpc.evalspec import SuiteError
from robustbench_rpc.store.results import ResultsStore
from tiny_runs import suite_text

ROOT = Path(__file__).resolve().parents[1]
MINI_SUITE = suite_text(dict(kind="clean"), name="mini", batch_size=32, seed=0, limit=64)


@pytest.fixture
def mini_suite(tmp_path) -> Path:
    p = tmp_path / "mini.toml"
    p.write_text(MINI_SUITE)
    return p


def _cnn(**kwargs) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 10))


def _models(out: Path):
    with ResultsStore(out / "results.sqlite", readonly=True) as s:
        return s.models(), s.samples(), s.checks()


# -------------------------------------------------------------------------------------- the contract

def _timm_factory_without_cfg(name: str):
    """What a user once did: a timm factory (swallowing pretrained_cfg) that declares no contract."""
    def factory(pretrained=False, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("pretrained") and k != "cache_dir"}
        return timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1,
                                                                num_heads=2, num_classes=10, **kwargs)
    factory.__name__ = name
    factory.__module__ = __name__
    timm.models.register_model(factory)


def test_undeclared_contract_is_refused_not_defaulted_to_imagenet(mini_suite, tmp_path, capsys):
    """It was normalized with ImageNet mean/std at 224 px, silently (clean 98.4 vs 100, contrast-5 14.1 vs 49.2)."""
    _timm_factory_without_cfg("own_model_user_vit")
    with pytest.raises(ModelContractError) as e:
        load_model("timm:own_model_user_vit")
    msg = str(e.value)
    assert "model 'timm:own_model_user_vit' declares no evaluation contract" in msg
    assert "--input-size" in msg and "--mean" in msg and "register_model(" in msg and "\n" not in msg
    w = load_model("timm:own_model_user_vit", data_config={"input_size": "3,32,32", "mean": 0.5, "std": [0.25] * 3})
    assert w.data_config["mean"] == (0.5, 0.5, 0.5) and w.data_config["input_size"] == (3, 32, 32)
    assert w.data_config["interpolation"] == "bilinear" and w.data_config["crop_pct"] == 1.0
    assert w.data_config["contract_source"] == "given (input_size, mean, std)"
    torch.testing.assert_close(w.mean.flatten(), torch.full((3,), 0.5))
    with pytest.raises(ModelContractError, match="built for 32x32.*input size \\(3, 64, 64\\)"):
        load_model("timm:own_model_user_vit", data_config={"input_size": 64, "mean": 0.5, "std": 0.25})
    with pytest.raises(ModelContractError, match="unknown key 'men'. Did you mean: mean"):
        load_model("timm:own_model_user_vit", data_config={"men": 0.5})
    # the CLI: refused before compute, one line; then explicit flags
    out = tmp_path / "r"
    assert main(["run", "--suite", str(mini_suite), "--model", "timm:own_model_user_vit", "--out", str(out),
                 "--no-progress", "--no-report", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model 'timm:own_model_user_vit' declares no evaluation contract") and "\n" not in err
    assert not out.exists()
    assert main(["run", "--suite", str(mini_suite), "--model", "timm:own_model_user_vit", "--out", str(out),
                 "--input-size", "3,32,32", "--mean", "0.3057,0.3057,0.3057", "--std", "0.324,0.324,0.324",
                 "--no-progress", "--no-report", "--device", "cpu"]) == 0
    models, _, _ = _models(out)
    info = models.iloc[0]
    assert info["contract"] == "given (input_size, mean, std)" and info["mean"] == pytest.approx([0.3057] * 3)


def test_timm_models_carry_their_declared_contract():
    w = load_model("timm:deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
    assert w.data_config["contract_source"] == "model" and w.data_config["interpolation"] == "bicubic"
    assert w.data_config["crop_pct"] == 0.9 and w.data_config["input_size"] == (3, 32, 32)


def test_register_model_decorator():
    @register_model("own_model_cnn", input_size=(3, 32, 32), mean=(0.3,) * 3, std=(0.3,) * 3, num_classes=10,
                    notes="a test CNN")
    def own_model_cnn(**kwargs):
        return _cnn(**kwargs)

    assert own_model_cnn.__name__ == "own_model_cnn"  # the factory is returned unchanged
    assert "own_model_cnn" in robustbench_rpc.list_models()
    w = load_model("own_model_cnn")
    assert w.data_config["contract_source"] == "model" and w.data_config["mean"] == (0.3, 0.3, 0.3)
    assert w.data_config["crop_pct"] == 1.0 and w.data_config["interpolation"] == "bilinear"
    assert w.num_classes == 10 and w(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(timm.create_model("own_model_cnn"), nn.Sequential)  # timm's pretrained_cfg is swallowed
    with pytest.raises(ValueError, match="'own_model_cnn' is already registered"):
        register_model("own_model_cnn", input_size=32, mean=0.5, std=0.5, num_classes=10)(_cnn)
    with pytest.raises(ValueError, match="no published weights"):
        timm.create_model("own_model_cnn", pretrained=True)
    with pytest.raises(ModelContractError, match="std must be > 0"):
        register_model("own_model_bad", input_size=32, mean=0.5, std=0.0, num_classes=10)
    with pytest.raises(ModelContractError, match="interpolation 'cubic'"):
        register_model("own_model_bad", input_size=32, mean=0.5, std=0.5, num_classes=10, interpolation="cubic")

    @register_model("own_model_wrong_classes", input_size=32, mean=0.5, std=0.5, num_classes=5)
    def wrong(**kwargs):
        return timm.create_model("vit_micro_patch4_32")  # 10 classes

    with pytest.raises(ModelContractError, match="declares num_classes=5 but its factory built .* num_classes=10"):
        load_model("own_model_wrong_classes")


def test_plugin_model_through_the_cli(tmp_path, mini_suite, capsys):
    plugin = tmp_path / "own_model_plugin.py"
    plugin.write_text(
        "import robustbench_rpc\nfrom torch import nn\n"
        "@robustbench_rpc.register_model('own_model_plugin_cnn', input_size=(3, 32, 32), mean=(0.3057,) * 3,\n"
        "                                std=(0.324,) * 3, num_classes=10)\n"
        "def f(width=4, **kwargs):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))\n")
    out = tmp_path / "r"
    assert main(["--plugin", str(plugin), "run", "--suite", str(mini_suite), "--model", "own_model_plugin_cnn",
                 "--model-arg", "width=3", "--reference", "own_model_plugin_cnn", "--out", str(out), "--no-progress",
                 "--no-report", "--device", "cpu"]) == 0
    models, samples, checks = _models(out)
    assert list(models["arch"]) == ["own_model_plugin_cnn"] and models.iloc[0]["contract"] == "model"
    assert models.iloc[0]["num_params"] == 3 * 3 * 3 * 3 + 3 + 3 * 10 + 10
    chance = checks[checks["check"] == "chance_level"].iloc[0]
    assert chance["status"] == "fail" and "not significantly above chance 1/10" in chance["message"]


# -------------------------------------------------------------------------------- checkpoints by name

def test_packaged_in_the_api_is_the_clis_packaged():
    a = load_model("symvit_micro_patch4_32", checkpoint="packaged")
    b = load_model("symvit_micro_patch4_32:packaged")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))
    spec = ModelSpec.parse("symvit_micro_patch4_32:packaged")
    assert spec.checkpoint == resolve_checkpoint("symvit_micro_patch4_32", "packaged") == \
        str(PACKAGED_DIR / "symvit_micro_patch4_32.safetensors")
    with pytest.raises(CheckpointError, match="model 'symvit_tiny_patch16_224': no packaged checkpoint"):
        load_model("symvit_tiny_patch16_224", checkpoint="packaged")
    with pytest.raises(SuiteError, match="no packaged checkpoint"):
        ModelSpec.parse("symvit_tiny_patch16_224:packaged")
    with pytest.raises(CheckpointError, match="applies to timm:<name> models"):
        load_model("symvit_micro_patch4_32", checkpoint="pretrained")


@pytest.fixture
def no_network(monkeypatch):
    """No test may download: sockets refuse to connect and the hub is offline."""
    import huggingface_hub.constants

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hub-cache")  # a cached copy on this machine must not help


def test_pretrained_offline_is_one_line_saying_so(no_network, mini_suite, tmp_path, capsys):
    with pytest.raises(CheckpointError) as e:
        load_model("timm:vit_tiny_patch16_224", checkpoint="pretrained")
    msg = str(e.value)
    assert msg.startswith("model 'timm:vit_tiny_patch16_224:pretrained': timm could not provide its pretrained")
    assert "no network" in msg and "\n" not in msg
    out = tmp_path / "r"
    assert main(["run", "--suite", str(mini_suite), "--model", "timm:vit_tiny_patch16_224:pretrained",
                 "--out", str(out), "--no-progress", "--no-report", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model 'timm:vit_tiny_patch16_224:pretrained'") and "no network" in err
    assert "\n" not in err and not out.exists()


# ------------------------------------------------------------------------------- your own image folder

def write_digit_folder(root: Path, n: int = 40) -> None:
    """digits32 test images as PNG files under root/<class>/ (the user's own ImageFolder)."""
    from torchvision.transforms.functional import to_pil_image

    from robustbench_rpc.data.embedded import digits32

    ds = digits32("test")
    for i in range(n):
        x, y, _ = ds[i]
        (root / str(int(y))).mkdir(parents=True, exist_ok=True)
        to_pil_image(x).save(root / str(int(y)) / f"img{i:04d}.png")


def test_image_folder_dataset_from_the_cli(mini_suite, tmp_path, capsys):
    images = tmp_path / "my_images"
    write_digit_folder(images)
    out = tmp_path / "r"
    assert main(["run", "--suite", str(mini_suite), "--dataset", "folder", "--data-root", f"folder={images}",
                 "--out", str(out), "--no-progress", "--no-report", "--device", "cpu"]) == 0
    _, samples, checks = _models(out)
    assert len(samples) == 40 and samples["correct1"].mean() > 0.9  # the packaged model on its own digits
    assert checks[checks["check"] == "chance_level"].iloc[0]["status"] == "pass"
    classes = sorted(p.name for p in images.iterdir())
    assert sorted(samples["label"].unique()) == list(range(len(classes)))
    (images / "extra_class").mkdir()
    next((images / classes[0]).glob("*.png")).rename(images / "extra_class" / "x.png")
    assert main(["run", "--suite", str(mini_suite), "--dataset", "folder", "--data-root", f"folder={images}",
                 "--out", str(tmp_path / "r2"), "--no-progress", "--no-report", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "predicts 10 classes but dataset 'folder'" in err and "has 11" in err


# ------------------------------------------------------------------------------------ attention swaps

def test_attention_swap_that_cannot_keep_weights(mini_suite, tmp_path, capsys):
    """--model vit_micro_patch4_32:packaged --attention symmetric re-initialised qkv: 9.4 %, all checks passed."""
    args = ["run", "--suite", str(mini_suite), "--model", "vit_micro_patch4_32:packaged", "--attention", "symmetric",
            "--no-progress", "--no-report", "--device", "cpu"]
    out = tmp_path / "r"
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--attention symmetric on model vit_micro_patch4_32:packaged" in err
    assert "blocks.0.attn.qkv.weight (192x64 -> 128x64)" in err and "--attention-reinit" in err
    assert "\n" not in err and not out.exists()
    assert main(args + ["--out", str(out), "--attention-reinit"]) == 0
    models, _, checks = _models(out)
    info = models.iloc[0]
    assert info["name"] == "vit_micro_patch4_32+symmetric@all[reinit]"
    assert "blocks.3.attn.qkv.bias" in info["attention_reinit"] and len(info["attention_reinit"]) == 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["model_settings"][info["name"]]["attention_reinit"]["source"] == "--attention-reinit"
    chance = checks[checks["check"] == "chance_level"].iloc[0]
    assert chance["status"] == "fail"
    assert "FAIL chance_level" in capsys.readouterr().out


def test_attention_args_checked_by_the_shared_check(mini_suite):
    with pytest.raises(SuiteError, match=r"--attention-arg n_iters: attention variant 'rpc' has no parameter "
                                         r"'n_iters'\. Did you mean: n_iter"):
        Plan(RunConfig(suite=mini_suite, attention="rpc", attention_args={"n_iters": 6}))


# ------------------------------------------------------------------------------ the guide's example

def guide_section(title: str) -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "own-model.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_own_model_guide_runs_as_copied(tmp_path):
    """Write the plugin from the guide (docs/own-model.md), run every command of the section as written (with the user's
    images in my_images/), and the Python example."""
    blocks = guide_section("Evaluate your own model")
    python = [b for lang, b in blocks if lang == "python"]
    bash = [b for lang, b in blocks if lang == "bash"]
    assert python[0].startswith("# my_models.py\n") and len(bash) >= 2
    (tmp_path / "my_models.py").write_text(python[0])
    write_digit_folder(tmp_path / "my_images", n=20)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for block in bash:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            if not command or command.startswith("#"):
                continue
            argv = shlex.split(command)
            assert argv[0] == "robustbench-rpc", command
            res = subprocess.run([sys.executable, "-m", "robustbench_rpc", *argv[1:]], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"{command}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            if " models " in command:
                assert "my_cnn" in res.stdout and "small CNN for 32x32 digits" in res.stdout
            else:
                assert "FAIL chance_level (my_cnn)" in res.stdout  # untrained, as the guide says
    for out in ("runs/mine", "runs/mine-folder"):
        models, samples, _ = _models(tmp_path / out)
        assert list(models["arch"]) == ["my_cnn"] and models.iloc[0]["contract"] == "model"
    assert (tmp_path / "runs/mine/index.html").is_file()
    for code in python[1:]:
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "(3, 32, 32) (0.3057, 0.3057, 0.3057) model" in res.stdout
