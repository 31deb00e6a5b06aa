import argparse
import os
import pickle

import pytest
import timm
import torch

from robustbench_rpc import load_checkpoint, load_model
from robustbench_rpc.models import CheckpointError, read_checkpoint_metadata, save_checkpoint
from reference_vit import vit_forward


def _rpc(tiny_kwargs, **kw):
    return timm.create_model("rpc_symvit_tiny_patch16_224", rpc_iters=2, rpc_lambda=1.0, **tiny_kwargs, **kw).eval()


def _paper_layout(sd, layer=0):
    """The paper's training checkpoint (Attack/main.py): args name the DeiT arch and the PAP settings."""
    args = argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4, batch_size=256, device="cuda",
                              input_size=224, drop_path=0.1, robust=True, num_iter=2, lambd=1.0, layer=layer,
                              nb_classes=10)
    return {"model": sd, "args": args, "epoch": 299, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
            "lr_scheduler": {"last_epoch": 299}}


@pytest.mark.parametrize("layout", ["paper", "paper_ddp", "plain", "timm", "ema", "safetensors", "wrapper"])
def test_round_trip_every_layout(layout, tiny_kwargs, tmp_path):
    src = _rpc(tiny_kwargs)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sd = src.state_dict()
    path = tmp_path / ("ckpt.safetensors" if layout == "safetensors" else "ckpt.pth")
    if layout == "paper":
        torch.save(_paper_layout(sd), path)
    elif layout == "paper_ddp":
        torch.save(_paper_layout({"module." + k: v for k, v in sd.items()}), path)
    elif layout == "plain":
        torch.save(sd, path)
    elif layout == "timm":
        torch.save({"state_dict": sd, "arch": "rpc_symvit_tiny_patch16_224", "epoch": 3}, path)
    elif layout == "ema":
        junk = {k: torch.zeros_like(v) for k, v in sd.items()}
        torch.save({"model": junk, "model_ema": sd}, path)
    elif layout == "wrapper":
        save_checkpoint(load_model("rpc_symvit_tiny_patch16_224", rpc_iters=2, rpc_lambda=1.0, **tiny_kwargs), path)
        src = load_model("rpc_symvit_tiny_patch16_224", checkpoint=path, rpc_iters=2, rpc_lambda=1.0, **tiny_kwargs).model
        sd = src.state_dict()
    else:
        save_checkpoint(src, path, metadata={"model": "rpc_symvit_tiny_patch16_224", "kwargs": tiny_kwargs})
        assert read_checkpoint_metadata(path)["kwargs"]["embed_dim"] == 48
    dst = _rpc(tiny_kwargs)
    load_checkpoint(dst, path, prefer_ema=(layout == "ema"))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))
    torch.testing.assert_close(dst(x), vit_forward(sd, x, 3, ["rpc", "symmetric"], 2, 1.0), atol=1e-4, rtol=1e-4)


def test_load_model_with_paper_checkpoint_on_unit_images(tiny_kwargs, tmp_path):
    src = _rpc(tiny_kwargs, rpc_layers="all")
    path = tmp_path / "best.pth"
    torch.save(_paper_layout(src.state_dict(), layer=-1), path)
    w = load_model(f"rpc_symvit_tiny_patch16_224:{path}", rpc_iters=2, rpc_lambda=1.0, rpc_layers="all", **tiny_kwargs)
    assert w.model_settings["rpc_layers"]["source"] == "checkpoint args (robust=True, layer=-1)"
    assert load_model(f"rpc_symvit_tiny_patch16_224:{path}", **tiny_kwargs).model_settings == w.model_settings
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    ref = vit_forward(src.state_dict(), (x - mean) / std, 3, ["rpc", "rpc"], 2, 1.0)
    torch.testing.assert_close(w(x), ref, atol=1e-4, rtol=1e-4)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_malicious_pickle_is_refused(tiny_kwargs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "payload": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(_rpc(tiny_kwargs), path)
    assert not (tmp_path / "PWNED_MARKER").exists()
    torch.save({"model": _rpc(tiny_kwargs).state_dict(), "x": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model("rpc_symvit_tiny_patch16_224", checkpoint=path, **tiny_kwargs)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_mismatch_error_explains_architecture(tiny_kwargs, tmp_path):
    deit = timm.create_model("deit_tiny_patch16_224", **tiny_kwargs)
    path = tmp_path / "deit.pth"
    torch.save({"model": deit.state_dict()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_rpc(tiny_kwargs), path)
    msg = str(e.value)
    assert "mis-shaped keys" in msg and "blocks.0.attn.qkv.weight" in msg
    assert "qkv has 3*dim rows" in msg and "qkv has 2*dim rows: a symmetric model" in msg
    other = timm.create_model("symvit_tiny_patch16_224", **{**tiny_kwargs, "depth": 3})
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(\d+\): blocks\.2"):
        load_checkpoint(_rpc(tiny_kwargs), path)


def test_missing_and_garbage_files(tiny_kwargs, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(_rpc(tiny_kwargs), tmp_path / "nope.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(_rpc(tiny_kwargs), bad)


@pytest.mark.parametrize("content", [b"hello world\nthis is a text file\n", b"", "random"])
def test_non_checkpoint_file_is_one_line_naming_the_path(content, tiny_kwargs, tmp_path):
    """A text file, an empty file and random bytes (which made torch raise KeyError / IndexError / EOFError)."""
    path = tmp_path / "notes.pth"
    for seed in range(6 if content == "random" else 1):
        path.write_bytes(os.urandom(1000 * (seed + 1)) if content == "random" else content)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(_rpc(tiny_kwargs), path)
        msg = str(e.value)
        assert str(path) in msg and "not a PyTorch checkpoint" in msg and "\n" not in msg, msg
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            load_model("rpc_symvit_tiny_patch16_224", checkpoint=path, **tiny_kwargs)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_refusal_names_the_global_and_how_to_save(writer, tiny_kwargs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    obj = {"model": _rpc(tiny_kwargs).state_dict(), "x": _Evil()}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_rpc(tiny_kwargs), path)
    msg = str(e.value)
    assert f"refusing to load {path}" in msg and f"{os.system.__module__}.system" in msg  # posix.system
    assert "torch.save(model.state_dict(), path)" in msg
    assert "\x1b" not in msg and "weights_only" not in msg and "\n" not in msg, msg
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_trusted_globals_allow_list(tiny_kwargs, tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "with_numpy.pth"
    torch.save({"model": _rpc(tiny_kwargs).state_dict(), "best_acc": np.float64(0.5)}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(_rpc(tiny_kwargs), path)
    refused = str(e.value).split("references ")[1].split(",")[0]
    assert refused.startswith("numpy.") and f"--trust-global {refused}" in str(e.value)
    allow = [refused]
    for _ in range(5):  # what a user does: trust each named global in turn (numpy scalars also need dtypes)
        try:
            load_checkpoint(_rpc(tiny_kwargs), path, trusted_globals=allow)
            break
        except CheckpointError as err:
            allow.append(str(err).split("references ")[1].split(",")[0])
    load_checkpoint(_rpc(tiny_kwargs), path, trusted_globals=allow)
    w = load_model("rpc_symvit_tiny_patch16_224", checkpoint=path, trusted_globals=allow, **tiny_kwargs)
    assert w.num_classes == 10
    with pytest.raises(CheckpointError, match="trusted global 'numpy.not_a_thing'"):
        load_checkpoint(_rpc(tiny_kwargs), path, trusted_globals=["numpy.not_a_thing"])
